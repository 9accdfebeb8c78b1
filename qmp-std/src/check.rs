//! The optional check of each command's arguments against the server's own schema, before
//! sending (`Options::check_arguments`, feature `qapi`), for the three clients alike: each
//! asks [`ArgumentCheck::needs_schema`], fetches `query-qmp-schema` once through its own
//! primitive when told to, then calls [`ArgumentCheck::check`].

use serde::Serialize;

use crate::error::Result;

/// The command whose answer is the schema (never checked itself).
pub(crate) const SCHEMA_COMMAND: &str = "query-qmp-schema";

/// One connection's check: whether it is on (read for every command: first, `repr(C)`),
/// and the schema once fetched.
#[derive(Debug, Default)]
#[repr(C)]
pub(crate) struct ArgumentCheck {
    #[cfg(feature = "qapi")]
    enabled: bool,
    #[cfg(feature = "qapi")]
    schema: std::sync::OnceLock<crate::Schema>,
}

impl ArgumentCheck {
    /// The check that `options` ask for.
    pub(crate) fn new(options: &crate::Options) -> Self {
        #[cfg(feature = "qapi")]
        return Self {
            enabled: options.check_arguments,
            schema: std::sync::OnceLock::new(),
        };
        #[cfg(not(feature = "qapi"))]
        {
            let _ = options;
            Self {}
        }
    }

    /// Whether command `name` is to be checked and the schema must be fetched first.
    pub(crate) fn needs_schema(&self, name: &str) -> bool {
        #[cfg(feature = "qapi")]
        return self.enabled && name != SCHEMA_COMMAND && self.schema.get().is_none();
        #[cfg(not(feature = "qapi"))]
        {
            let _ = name;
            false
        }
    }

    /// Takes the fetched schema (the JSON text of `query-qmp-schema`'s answer).
    pub(crate) fn load(&self, json: &str) -> Result<()> {
        #[cfg(feature = "qapi")]
        {
            let value: serde_json::Value = crate::error::decode(json)?;
            let schema =
                crate::Schema::from_json(&value).map_err(|e| crate::Error::Invalid(Box::new(e)))?;
            let _ = self.schema.set(schema);
        }
        #[cfg(not(feature = "qapi"))]
        let _ = json;
        Ok(())
    }

    /// Checks a command's arguments when the check is on (nothing is sent on failure).
    pub(crate) fn check<A: Serialize + ?Sized>(&self, name: &str, arguments: &A) -> Result<()> {
        #[cfg(feature = "qapi")]
        if self.enabled
            && let Some(schema) = self.schema.get()
        {
            let value = serde_json::to_value(arguments)
                .map_err(|e| crate::Error::Decode(crate::DecodeError::new(e, String::new())))?;
            return schema
                .check(name, &value)
                .map_err(|e| crate::Error::Invalid(Box::new(e)));
        }
        let _ = (name, arguments);
        Ok(())
    }
}
