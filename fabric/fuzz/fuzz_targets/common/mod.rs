//! What the session fuzz targets share: their runtime and the ways they
//! damage and split the bytes they send.

use bytes::BytesMut;
use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;

/// A current-thread runtime with I/O and timers: the fuzz target's calls
/// drive it, so nothing runs between inputs.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Up to 256 fuzzed bytes.
pub fn raw_bytes(u: &mut Unstructured, out: &mut BytesMut) -> ArbResult<()> {
    let n = u.int_in_range(0..=256usize)?;
    out.extend_from_slice(u.bytes(n.min(u.len()))?);
    Ok(())
}

/// Send `out`: sometimes with one byte corrupted (a header field, a digest,
/// data), sometimes in two pieces with a pause between. False once the
/// peer closed.
pub async fn send(u: &mut Unstructured<'_>, wr: &mut OwnedWriteHalf, mut out: BytesMut) -> ArbResult<bool> {
    if !out.is_empty() && u.ratio(1, 16)? {
        let i = u.choose_index(out.len())?;
        out[i] ^= u.int_in_range(1..=255u8)?;
    }
    if out.len() > 1 && u.ratio(1, 8)? {
        let cut = u.int_in_range(1..=out.len() - 1)?;
        if wr.write_all(&out[..cut]).await.is_err() {
            return Ok(false);
        }
        tokio::task::yield_now().await;
        return Ok(wr.write_all(&out[cut..]).await.is_ok());
    }
    Ok(wr.write_all(&out).await.is_ok())
}
