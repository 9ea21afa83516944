//! Struct layouts read from the `.BTF` section of a compiled eBPF object: enough of
//! ELF and BTF to answer "what are the size and the field offsets of
//! `struct warren_svc_key` as clang laid it out", which the C/Rust layout test
//! compares with the `#[repr(C)]` mirrors in `warren-common`. Not a general BTF
//! library (aya-obj keeps its type table private).

use std::fmt;

/// A field of a C struct as BTF describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The field's name.
    pub name: String,
    /// Byte offset in the struct.
    pub offset: usize,
    /// Size in bytes.
    pub size: usize,
}

/// A C struct as BTF describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StructLayout {
    /// The struct's name (without `struct`).
    pub name: String,
    /// `sizeof`.
    pub size: usize,
    /// Fields in declaration order.
    pub members: Vec<Member>,
}

/// Why an object's BTF could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BtfError(String);

impl fmt::Display for BtfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "reading BTF: {}", self.0)
    }
}

impl std::error::Error for BtfError {}

fn err<T>(msg: impl Into<String>) -> Result<T, BtfError> {
    Err(BtfError(msg.into()))
}

fn u16_at(b: &[u8], off: usize) -> Result<u16, BtfError> {
    b.get(off..off + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| BtfError(format!("truncated at byte {off}")))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, BtfError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| BtfError(format!("truncated at byte {off}")))
}

fn u64_at(b: &[u8], off: usize) -> Result<u64, BtfError> {
    b.get(off..off + 8)
        .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
        .ok_or_else(|| BtfError(format!("truncated at byte {off}")))
}

/// The bytes of the ELF section called `name` (a little-endian ELF64 object).
pub fn elf_section<'a>(elf: &'a [u8], name: &str) -> Result<&'a [u8], BtfError> {
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return err("not a little-endian ELF64 object");
    }
    let shoff = u64_at(elf, 0x28)? as usize;
    let shentsize = u16_at(elf, 0x3a)? as usize;
    let shnum = u16_at(elf, 0x3c)? as usize;
    let shstrndx = u16_at(elf, 0x3e)? as usize;
    let header = |i: usize| shoff + i * shentsize;
    let strtab_off = u64_at(elf, header(shstrndx) + 0x18)? as usize;
    for i in 0..shnum {
        let h = header(i);
        let name_off = u32_at(elf, h)? as usize;
        let start = strtab_off + name_off;
        let end = elf[start..]
            .iter()
            .position(|&c| c == 0)
            .map(|p| start + p)
            .ok_or_else(|| BtfError("unterminated section name".into()))?;
        if &elf[start..end] == name.as_bytes() {
            let off = u64_at(elf, h + 0x18)? as usize;
            let size = u64_at(elf, h + 0x20)? as usize;
            return elf
                .get(off..off + size)
                .ok_or_else(|| BtfError(format!("section {name} lies outside the file")));
        }
    }
    err(format!("no {name} section"))
}

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Type {
    name_off: u32,
    kind: u32,
    kind_flag: bool,
    /// `size` or `type`, depending on the kind.
    size_or_type: u32,
    /// Struct/union members: (name_off, type, offset word).
    members: Vec<(u32, u32, u32)>,
    /// Array: (element type, element count).
    array: Option<(u32, u32)>,
}

/// The types of one BTF blob.
pub struct Btf {
    types: Vec<Type>, // index = type id; id 0 is void
    strings: Vec<u8>,
}

impl Btf {
    /// Parses the `.BTF` section of an ELF object.
    pub fn from_elf(elf: &[u8]) -> Result<Self, BtfError> {
        Self::parse(elf_section(elf, ".BTF")?)
    }

    /// Parses raw BTF.
    pub fn parse(b: &[u8]) -> Result<Self, BtfError> {
        if u16_at(b, 0)? != 0xeb9f {
            return err("bad BTF magic (not little-endian BTF)");
        }
        let hdr_len = u32_at(b, 4)? as usize;
        let type_off = u32_at(b, 8)? as usize;
        let type_len = u32_at(b, 12)? as usize;
        let str_off = u32_at(b, 16)? as usize;
        let str_len = u32_at(b, 20)? as usize;
        let types_bytes = b
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or_else(|| BtfError("type section out of range".into()))?;
        let strings = b
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or_else(|| BtfError("string section out of range".into()))?
            .to_vec();

        let mut types = vec![Type {
            name_off: 0,
            kind: 0,
            kind_flag: false,
            size_or_type: 0,
            members: vec![],
            array: None,
        }];
        let t = types_bytes;
        let mut off = 0;
        while off < t.len() {
            let name_off = u32_at(t, off)?;
            let info = u32_at(t, off + 4)?;
            let size_or_type = u32_at(t, off + 8)?;
            off += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut ty = Type {
                name_off,
                kind,
                kind_flag,
                size_or_type,
                members: vec![],
                array: None,
            };
            match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => off += 4,
                KIND_ARRAY => {
                    ty.array = Some((u32_at(t, off)?, u32_at(t, off + 8)?));
                    off += 12;
                }
                KIND_STRUCT | KIND_UNION => {
                    for _ in 0..vlen {
                        ty.members
                            .push((u32_at(t, off)?, u32_at(t, off + 4)?, u32_at(t, off + 8)?));
                        off += 12;
                    }
                }
                KIND_ENUM => off += 8 * vlen,
                KIND_FUNC_PROTO => off += 8 * vlen,
                KIND_DATASEC | KIND_ENUM64 => off += 12 * vlen,
                KIND_PTR | 7 | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | 12 | KIND_FLOAT
                | KIND_TYPE_TAG => {}
                other => return err(format!("unknown BTF kind {other}")),
            }
            types.push(ty);
        }
        Ok(Self { types, strings })
    }

    fn name(&self, off: u32) -> String {
        let start = off as usize;
        let end = self.strings[start..]
            .iter()
            .position(|&c| c == 0)
            .map_or(self.strings.len(), |p| start + p);
        String::from_utf8_lossy(&self.strings[start..end]).into_owned()
    }

    fn ty(&self, id: u32) -> Result<&Type, BtfError> {
        self.types
            .get(id as usize)
            .ok_or_else(|| BtfError(format!("type id {id} out of range")))
    }

    /// The size in bytes of type `id`.
    fn size_of(&self, id: u32) -> Result<usize, BtfError> {
        let mut id = id;
        for _ in 0..32 {
            let t = self.ty(id)?;
            match t.kind {
                KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT => {
                    return Ok(t.size_or_type as usize)
                }
                KIND_PTR => return Ok(8),
                KIND_ARRAY => {
                    let (elem, n) = t.array.expect("array info");
                    return Ok(self.size_of(elem)? * n as usize);
                }
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => id = t.size_or_type,
                other => return err(format!("type id {id} of kind {other} has no size")),
            }
        }
        err("type chain too long")
    }

    /// The names of every named struct.
    pub fn struct_names(&self) -> Vec<String> {
        self.types
            .iter()
            .filter(|t| t.kind == KIND_STRUCT && t.name_off != 0)
            .map(|t| self.name(t.name_off))
            .collect()
    }

    /// The layout of `struct name`, if the object's BTF has it.
    pub fn struct_layout(&self, name: &str) -> Result<Option<StructLayout>, BtfError> {
        let Some(t) = self
            .types
            .iter()
            .find(|t| t.kind == KIND_STRUCT && self.name(t.name_off) == name)
        else {
            return Ok(None);
        };
        let mut members = Vec::with_capacity(t.members.len());
        for &(name_off, ty, offset) in &t.members {
            let bits = if t.kind_flag {
                if offset >> 24 != 0 {
                    return err(format!("struct {name} has a bitfield; shared structs may not"));
                }
                offset & 0x00ff_ffff
            } else {
                offset
            };
            if bits % 8 != 0 {
                return err(format!("struct {name}: member at bit {bits} is not byte aligned"));
            }
            members.push(Member {
                name: self.name(name_off),
                offset: bits as usize / 8,
                size: self.size_of(ty)?,
            });
        }
        Ok(Some(StructLayout {
            name: name.to_string(),
            size: t.size_or_type as usize,
            members,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_struct_from_the_embedded_object() {
        let btf = Btf::from_elf(crate::warren_object()).expect("BTF");
        let key = btf
            .struct_layout("warren_svc_key")
            .expect("parse")
            .expect("struct warren_svc_key present");
        assert_eq!(key.size, 8);
        let names: Vec<_> = key.members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["addr", "port", "proto", "pad"]);
        assert_eq!(key.members[1].offset, 4);
        assert_eq!(key.members[1].size, 2);
        assert!(btf.struct_layout("no_such_struct").expect("parse").is_none());
    }

    #[test]
    fn rejects_what_is_not_elf() {
        assert!(Btf::from_elf(b"hello").is_err());
    }
}
