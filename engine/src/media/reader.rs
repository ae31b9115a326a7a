//! The bounded little-endian reader every format parses untrusted bytes with, and the
//! u64 length framing of signed messages.
//!
//! What does not live here: any format's layout or limits (each format's module names the
//! limit a length is checked against).

use super::ContainerError;

/// A bounded little-endian reader over untrusted bytes: every read checks the bytes
/// present, every length a caller reads is checked against a limit before it is used.
pub(super) struct Reader<'a> {
    bytes: &'a [u8],
    pub(super) position: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, position: 0 }
    }

    pub(super) fn take(&mut self, len: usize) -> Result<&'a [u8], ContainerError> {
        let end = self.position.checked_add(len).ok_or(ContainerError::TooLarge(usize::MAX))?;
        let slice = self.bytes.get(self.position..end).ok_or(ContainerError::Truncated { needed: end, present: self.bytes.len() })?;
        self.position = end;
        Ok(slice)
    }

    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], ContainerError> {
        let mut array = [0u8; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    pub(super) fn u8(&mut self) -> Result<u8, ContainerError> {
        Ok(self.array::<1>()?[0])
    }

    pub(super) fn u16(&mut self) -> Result<u16, ContainerError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub(super) fn u32(&mut self) -> Result<u32, ContainerError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(super) fn u64(&mut self) -> Result<u64, ContainerError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub(super) fn i64(&mut self) -> Result<i64, ContainerError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    /// A length read from the input, refused above `max` before anything is allocated.
    pub(super) fn bounded(&mut self, declared: u64, max: usize, what: &str) -> Result<usize, ContainerError> {
        usize::try_from(declared)
            .ok()
            .filter(|len| *len <= max)
            .ok_or_else(|| ContainerError::Malformed(format!("{what} of {declared} bytes is over the {max}-byte limit")))
    }

    /// Bytes framed by a u64 length (the canonical framing of signed messages).
    pub(super) fn framed(&mut self, max: usize, what: &str) -> Result<&'a [u8], ContainerError> {
        let declared = self.u64()?;
        let len = self.bounded(declared, max, what)?;
        self.take(len)
    }

    pub(super) fn framed_str(&mut self, max: usize, what: &str) -> Result<&'a str, ContainerError> {
        std::str::from_utf8(self.framed(max, what)?).map_err(|_| ContainerError::Malformed(format!("{what} is not UTF-8")))
    }

    pub(super) fn remaining(&self) -> usize {
        self.bytes.len() - self.position
    }

    pub(super) fn finish(&self) -> Result<(), ContainerError> {
        match self.remaining() {
            0 => Ok(()),
            trailing => Err(ContainerError::Trailing(trailing)),
        }
    }
}

pub(super) fn put_framed(out: &mut Vec<u8>, part: &[u8]) {
    out.extend_from_slice(&(part.len() as u64).to_le_bytes());
    out.extend_from_slice(part);
}
