//! The byte primitives the store's encodings share: unsigned LEB128 varints, zigzag for
//! signed values, length-prefixed byte strings, and a cursor that says what it was reading
//! when the bytes end early. What the fields mean is up to the encodings that use them (a
//! record body, `pages/record.rs`; a journal entry, `journal/codec.rs`).
//!
//! ```text
//! varint = unsigned LEB128: 7 bits per byte, least significant group first, high bit set
//!          on every byte but the last; at most 10 bytes for a u64, 5 for a u32
//! zigzag = a signed value n as the varint of (n << 1) ^ (n >> 63): 0, -1, 1, -2 -> 0, 1, 2, 3
//! str    = varint byte length, then the bytes (UTF-8 for strings)
//! ```

pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

pub fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

pub fn unzigzag(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

/// A cursor over a body; every read says what it was reading when the body ends early.
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, pos: 0 }
    }

    /// What is left unread.
    pub fn rest(&self) -> &'a [u8] {
        &self.bytes[self.pos..]
    }

    pub fn left(&self) -> usize {
        self.bytes.len() - self.pos
    }

    pub fn u8(&mut self, what: &str) -> Result<u8, String> {
        let b = *self.bytes.get(self.pos).ok_or_else(|| format!("the body ends in its {what}"))?;
        self.pos += 1;
        Ok(b)
    }

    pub fn varint(&mut self, what: &str) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8(what)?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(format!("the {what} overflows 64 bits"));
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("the {what} is longer than 10 bytes"))
    }

    pub fn varint_u32(&mut self, what: &str) -> Result<u32, String> {
        let v = self.varint(what)?;
        u32::try_from(v).map_err(|_| format!("the {what} {v} overflows 32 bits"))
    }

    pub fn bytes(&mut self, what: &str) -> Result<&'a [u8], String> {
        let len = self.varint(what)?;
        if len > self.left() as u64 {
            return Err(format!(
                "the {what} is {len} bytes long, but only {} are left",
                self.left()
            ));
        }
        let start = self.pos;
        self.pos += len as usize;
        Ok(&self.bytes[start..self.pos])
    }

    pub fn string(&mut self, what: &str) -> Result<String, String> {
        let bytes = self.bytes(what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("the {what} is not UTF-8"))
    }

    /// Like [`Reader::string`], into `out` (cleared first), reusing its capacity.
    pub fn string_into(&mut self, what: &str, out: &mut String) -> Result<(), String> {
        let bytes = self.bytes(what)?;
        let s = std::str::from_utf8(bytes).map_err(|_| format!("the {what} is not UTF-8"))?;
        out.clear();
        out.push_str(s);
        Ok(())
    }
}
