//! The C structs of `include/warren.h`, as clang laid them out in the compiled
//! objects (read from their BTF), against the `#[repr(C)]` mirrors in
//! `warren-common`: same size, same fields in the same order at the same offsets
//! with the same sizes. Any divergence fails here, before a loader ever writes a
//! misaligned map entry.

use warren_common::{FieldLayout, SHARED_LAYOUTS};
use warren_ebpf::btf::{Btf, StructLayout};

fn c_layout(name: &str) -> StructLayout {
    let objects = [
        ("warren.bpf.o", warren_ebpf::warren_object()),
        ("sock_destroy.bpf.o", warren_ebpf::sock_destroy_object_raw()),
    ];
    for (obj_name, obj) in objects {
        let btf = Btf::from_elf(obj).unwrap_or_else(|e| panic!("{obj_name}: {e}"));
        if let Some(layout) = btf.struct_layout(name).unwrap_or_else(|e| panic!("{obj_name}: {e}")) {
            return layout;
        }
    }
    panic!("struct {name} is in no compiled object's BTF (is it used by a map?)");
}

fn compare(c: &StructLayout, rust_size: usize, rust: &[FieldLayout]) -> Vec<String> {
    let mut problems = Vec::new();
    if c.size != rust_size {
        problems.push(format!("size: C {} bytes, Rust {} bytes", c.size, rust_size));
    }
    let n = c.members.len().max(rust.len());
    for i in 0..n {
        match (c.members.get(i), rust.get(i)) {
            (Some(cm), Some(rm)) => {
                if cm.name != rm.name {
                    problems.push(format!("field {i}: C `{}`, Rust `{}`", cm.name, rm.name));
                }
                if cm.offset != rm.offset {
                    problems.push(format!(
                        "field `{}`: C offset {}, Rust offset {}",
                        cm.name, cm.offset, rm.offset
                    ));
                }
                if cm.size != rm.size {
                    problems.push(format!(
                        "field `{}`: C size {}, Rust size {}",
                        cm.name, cm.size, rm.size
                    ));
                }
            }
            (Some(cm), None) => problems.push(format!("field `{}` is missing in Rust", cm.name)),
            (None, Some(rm)) => problems.push(format!("field `{}` is missing in C", rm.name)),
            (None, None) => unreachable!(),
        }
    }
    problems
}

#[test]
fn c_and_rust_layouts_agree() {
    let mut failures = Vec::new();
    for (name, size, fields) in SHARED_LAYOUTS {
        let c = c_layout(name);
        for p in compare(&c, size, fields) {
            failures.push(format!("struct {name}: {p}"));
        }
    }
    assert!(
        failures.is_empty(),
        "C and Rust layouts diverge:\n{}",
        failures.join("\n")
    );
}

/// The comparison itself must notice a difference, or the test above proves nothing.
#[test]
fn a_diverging_layout_is_reported() {
    let c = c_layout("warren_svc_value");
    let (_, size, fields) = SHARED_LAYOUTS
        .iter()
        .find(|(n, _, _)| *n == "warren_svc_value")
        .copied()
        .expect("mirror of warren_svc_value");
    assert!(compare(&c, size, fields).is_empty());

    let mut moved = fields.to_vec();
    moved[1].offset += 2;
    let problems = compare(&c, size, &moved);
    assert_eq!(problems, ["field `target_port`: C offset 4, Rust offset 6"]);

    let problems = compare(&c, size + 8, &fields[..3]);
    assert_eq!(
        problems,
        ["size: C 8 bytes, Rust 16 bytes", "field `pad` is missing in Rust"]
    );
}

/// A struct added to `warren.h` without a Rust mirror fails here.
#[test]
fn every_shared_c_struct_has_a_rust_mirror() {
    let mirrored: Vec<&str> = SHARED_LAYOUTS.iter().map(|(n, _, _)| *n).collect();
    for obj in [warren_ebpf::warren_object(), warren_ebpf::sock_destroy_object_raw()] {
        let btf = Btf::from_elf(obj).expect("BTF");
        for name in btf.struct_names() {
            if name.starts_with("warren_") {
                assert!(
                    mirrored.contains(&name.as_str()),
                    "struct {name} has no #[repr(C)] mirror in warren-common"
                );
            }
        }
    }
}
