//! Read buffers recycled per connection. A read's data buffer comes back
//! once its data is sent (TCP: its C2HData is on the wire; RDMA: it is
//! copied into a registered slot) and serves the next read, which then
//! lands in warm memory: allocating a fresh buffer per read made the
//! allocator hand freed memory back to the kernel and fault it in again,
//! zero-filled, on the next read (a fifth of the TCP target's CPU time for
//! 4 KiB reads).

use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use raid::buf::{alloc, is_aligned, IO_ALIGN};

/// Buffers kept at most (about one queue's worth of reads in flight).
const KEEP: usize = 128;
/// Largest buffer kept.
const MAX_LEN: usize = 1 << 20;

/// The free buffers of one connection.
#[derive(Default)]
pub(crate) struct ReadBuffers {
    free: Mutex<Vec<BytesMut>>,
}

impl ReadBuffers {
    /// An aligned buffer of exactly `len` bytes (its contents are stale:
    /// the backend overwrites all of it).
    pub fn take(&self, len: usize) -> BytesMut {
        let reused = {
            let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
            free.iter()
                .rposition(|b| b.capacity() >= len)
                .map(|i| free.swap_remove(i))
        };
        match reused {
            Some(mut b) => {
                if b.len() >= len {
                    b.truncate(len);
                } else {
                    // Within the capacity: no reallocation, alignment kept.
                    b.resize(len, 0);
                }
                b
            }
            None => alloc(len),
        }
    }

    /// Keep `data`'s buffer for a later read if nothing else refers to it
    /// and it is aligned for direct I/O.
    pub fn give_back(&self, data: Bytes) {
        if data.len() > MAX_LEN || !is_aligned(&data, IO_ALIGN) {
            return;
        }
        if let Ok(buf) = data.try_into_mut() {
            let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
            if free.len() < KEEP {
                free.push(buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_aligned_and_sized() {
        let pool = ReadBuffers::default();
        let mut a = pool.take(8192);
        assert_eq!(a.len(), 8192);
        a[0] = 7;
        let ptr = a.as_ptr();
        pool.give_back(a.freeze());
        let b = pool.take(4096);
        assert_eq!(b.as_ptr(), ptr, "the freed buffer is reused");
        assert_eq!(b.len(), 4096);
        assert!(is_aligned(&b, IO_ALIGN));
        pool.give_back(b.freeze());
        let c = pool.take(8192);
        assert_eq!(
            (c.as_ptr(), c.len()),
            (ptr, 8192),
            "grows back within its capacity"
        );
    }

    #[test]
    fn shared_or_unaligned_data_is_not_kept() {
        let pool = ReadBuffers::default();
        let shared = pool.take(4096).freeze();
        let other = shared.clone();
        pool.give_back(shared);
        assert!(pool.free.lock().unwrap().is_empty());
        drop(other);
        let unaligned = Bytes::from(vec![0u8; 4097]).slice(1..);
        pool.give_back(unaligned);
        assert!(pool.free.lock().unwrap().is_empty());
    }
}
