//! Hand-written additions to the generated vocabulary.

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::QomGet;
use qmp_proto::commands::Command;

/// `qom-get` with its result decoded as a `T` (the generated [`QomGet`] returns JSON).
///
/// ```
/// use qmp_proto::commands::Command;
/// use qmp_qapi::{QomGet, QomGetAs};
///
/// // With qmp-std: `let mac: String = client.execute(&QomGet::new(path, "mac").typed())?;`
/// let cmd: QomGetAs<String> = QomGet::new("/machine/peripheral/nic0", "mac").typed();
/// assert_eq!(QomGetAs::<String>::NAME, "qom-get");
/// assert_eq!(
///     serde_json::to_string(&cmd).unwrap(),
///     r#"{"path":"/machine/peripheral/nic0","property":"mac"}"#
/// );
/// let mac: <QomGetAs<String> as Command>::Output<'_> = serde_json::from_str(r#""52:54:00:12:34:56""#).unwrap();
/// assert_eq!(mac, "52:54:00:12:34:56");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(bound = "")]
pub struct QomGetAs<T> {
    /// The object's QOM path.
    pub path: String,
    /// The property's name.
    pub property: String,
    #[serde(skip)]
    output: PhantomData<fn() -> T>,
}

impl QomGet {
    /// The same command, its result decoded as a `T`.
    pub fn typed<T: DeserializeOwned>(self) -> QomGetAs<T> {
        QomGetAs {
            path: self.path,
            property: self.property,
            output: PhantomData,
        }
    }
}

impl<T: DeserializeOwned> Command for QomGetAs<T> {
    const NAME: &'static str = "qom-get";
    type Output<'de> = T;
}
