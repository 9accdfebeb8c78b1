//! Alternates (a member QEMU takes as one of several JSON types) convert from each of their
//! branches, so the common shapes need no enum spelled out: a qcow2 node over a file node
//! named `file0`, or over a definition given inline.

use qmp_qapi::{
    BlockdevAdd, BlockdevOptions, BlockdevOptionsDriver, BlockdevOptionsFile, BlockdevOptionsQcow2,
    BlockdevRef,
};
use serde_json::json;

#[test]
fn a_node_name_is_a_blockdev_ref() {
    let qcow2 = BlockdevOptionsQcow2::new("file0");
    assert_eq!(*qcow2.file, BlockdevRef::Str("file0".into()));
    let name = String::from("file1");
    assert_eq!(BlockdevRef::from(name.clone()), BlockdevRef::Str(name));
    let add = BlockdevAdd::from(
        BlockdevOptions::new(BlockdevOptionsDriver::Qcow2(Box::new(qcow2))).node_name("disk0"),
    );
    assert_eq!(
        serde_json::to_value(&add).unwrap(),
        json!({"driver": "qcow2", "node-name": "disk0", "file": "file0"})
    );
}

#[test]
fn a_definition_inline_is_a_blockdev_ref_too() {
    let file = BlockdevOptions::new(BlockdevOptionsDriver::File(BlockdevOptionsFile::new(
        "/tmp/disk.qcow2",
    )));
    let qcow2 = BlockdevOptionsQcow2::new(file);
    assert_eq!(
        serde_json::to_value(&qcow2).unwrap(),
        json!({"file": {"driver": "file", "filename": "/tmp/disk.qcow2"}})
    );
}
