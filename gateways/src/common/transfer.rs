//! The chunked transfer both hops use (engine → node in `FetchMedia`, node → player in
//! `Download` and `PlayPreview`): the checked reassembly of a `MediaChunk` stream, and the
//! size of the node's challenge, which the player checks.

use proto::v1::MediaChunk;

/// Bytes of a node's redemption challenge.
pub const CHALLENGE_BYTES: usize = 32;

/// Why a chunked media stream was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    #[error("a chunk starts at offset {got} where {expected} was expected")]
    Offset { expected: u64, got: u64 },
    #[error("the total size changed from {first} to {now} during the transfer")]
    TotalChanged { first: u64, now: u64 },
    #[error("{total} bytes is over the {max}-byte limit")]
    TooLarge { total: u64, max: u64 },
    #[error("a chunk runs past the declared total of {total} bytes")]
    Overrun { total: u64 },
    #[error("an empty chunk before the end of the transfer")]
    Empty,
    #[error("the stream ended after {received} of {total} bytes; retry from offset {received}")]
    Short { received: u64, total: u64 },
}

/// Reassembles a `MediaChunk` stream: each chunk must start where the previous one ended,
/// every chunk must declare the same total, the total is bounded, and the stream must end
/// exactly at the total. A transfer resumed with a new stream from `received()` continues
/// the same reassembly.
#[derive(Debug)]
pub struct Reassembly {
    bytes: Vec<u8>,
    total: Option<u64>,
    bytes_max: u64,
}

impl Reassembly {
    pub fn new(bytes_max: usize) -> Self {
        Self { bytes: Vec::new(), total: None, bytes_max: bytes_max as u64 }
    }

    /// Bytes received so far: the offset to resume from.
    pub fn received(&self) -> u64 {
        self.bytes.len() as u64
    }

    pub fn push(&mut self, chunk: MediaChunk) -> Result<(), ChunkError> {
        let total = match self.total {
            Some(first) if first != chunk.total_bytes => return Err(ChunkError::TotalChanged { first, now: chunk.total_bytes }),
            Some(first) => first,
            None => {
                if chunk.total_bytes > self.bytes_max {
                    return Err(ChunkError::TooLarge { total: chunk.total_bytes, max: self.bytes_max });
                }
                self.total = Some(chunk.total_bytes);
                // Bounded by `bytes_max` just above.
                self.bytes.reserve(usize::try_from(chunk.total_bytes).unwrap_or(0).saturating_sub(self.bytes.len()));
                chunk.total_bytes
            }
        };
        if chunk.offset != self.received() {
            return Err(ChunkError::Offset { expected: self.received(), got: chunk.offset });
        }
        if chunk.data.is_empty() && total != 0 {
            return Err(ChunkError::Empty);
        }
        if self.received() + chunk.data.len() as u64 > total {
            return Err(ChunkError::Overrun { total });
        }
        self.bytes.extend_from_slice(&chunk.data);
        Ok(())
    }

    /// The reassembled bytes; a stream without any chunk is an empty transfer.
    pub fn finish(self) -> Result<Vec<u8>, ChunkError> {
        let total = self.total.unwrap_or(0);
        if self.received() != total {
            return Err(ChunkError::Short { received: self.received(), total });
        }
        Ok(self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(offset: u64, data: &[u8], total_bytes: u64) -> MediaChunk {
        MediaChunk { offset, data: bytes::Bytes::copy_from_slice(data), total_bytes }
    }

    #[test]
    fn reassembly_accepts_contiguous_chunks_and_refuses_every_inconsistency() {
        let mut whole = Reassembly::new(10);
        whole.push(chunk(0, b"abc", 5)).expect("first");
        assert_eq!(whole.received(), 3);
        whole.push(chunk(3, b"de", 5)).expect("second");
        assert_eq!(whole.finish().expect("complete"), b"abcde");

        assert_eq!(Reassembly::new(10).finish().expect("no chunks is an empty transfer"), b"");
        let mut empty = Reassembly::new(10);
        empty.push(chunk(0, b"", 0)).expect("an empty total");
        assert_eq!(empty.finish().expect("empty"), b"");

        let mut gap = Reassembly::new(10);
        gap.push(chunk(0, b"abc", 5)).expect("first");
        assert_eq!(gap.push(chunk(4, b"e", 5)), Err(ChunkError::Offset { expected: 3, got: 4 }));
        let mut resent = Reassembly::new(10);
        resent.push(chunk(0, b"abc", 5)).expect("first");
        assert_eq!(resent.push(chunk(0, b"abc", 5)), Err(ChunkError::Offset { expected: 3, got: 0 }));
        let mut changed = Reassembly::new(10);
        changed.push(chunk(0, b"abc", 5)).expect("first");
        assert_eq!(changed.push(chunk(3, b"de", 6)), Err(ChunkError::TotalChanged { first: 5, now: 6 }));
        assert_eq!(Reassembly::new(10).push(chunk(0, b"a", 11)), Err(ChunkError::TooLarge { total: 11, max: 10 }));
        assert_eq!(Reassembly::new(10).push(chunk(0, b"abcdef", 5)), Err(ChunkError::Overrun { total: 5 }));
        assert_eq!(Reassembly::new(10).push(chunk(0, b"", 5)), Err(ChunkError::Empty));
        let mut short = Reassembly::new(10);
        short.push(chunk(0, b"abc", 5)).expect("first");
        assert_eq!(short.finish(), Err(ChunkError::Short { received: 3, total: 5 }));
    }
}
