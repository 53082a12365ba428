//! What `sign-image` accepts from a registry before it reads a byte of an image, and as the
//! bytes arrive: declared layer sizes within bounds, no more bytes than declared, no foreign
//! layers unless allowed, and bounded expansion of what it unpacks.

use std::io::Read;

use oci_client::manifest::OciDescriptor;

/// Largest layer blob downloaded. Module images are a few hundred MiB at most; the bound keeps
/// a hostile manifest from making the sign Job hold an arbitrary amount of memory.
pub const MAX_LAYER_BYTES: u64 = 4 << 30;
/// Most bytes one layer may expand to (a gzip bomb stops here).
pub const MAX_EXPANDED_BYTES: u64 = 32 << 30;
/// Largest selected file read to be signed (a kernel module is a few MiB).
pub const MAX_FILE_BYTES: u64 = 512 << 20;
/// Most bytes of selected files held at once.
pub const MAX_SELECTED_BYTES: u64 = 4 << 30;

/// The size to download for `layer`, or why it is not downloaded: a size out of bounds, or
/// foreign URLs (unless `allow_foreign`).
pub fn check_declared(layer: &OciDescriptor, allow_foreign: bool) -> Result<usize, String> {
    if layer.urls.as_ref().is_some_and(|u| !u.is_empty()) && !allow_foreign {
        return Err(
            "a foreign layer (its descriptor lists URLs outside the registry); pass --allow-foreign-layers to fetch it"
                .to_owned(),
        );
    }
    let size = u64::try_from(layer.size).map_err(|_| format!("declared size {} is negative", layer.size))?;
    if size > MAX_LAYER_BYTES {
        return Err(format!(
            "declared size {size} is over the {MAX_LAYER_BYTES}-byte limit"
        ));
    }
    usize::try_from(size).map_err(|_| format!("declared size {size} does not fit in memory"))
}

/// A reader that fails once more than `left` bytes have come through.
pub struct Bounded<R> {
    /// The reader counted.
    pub inner: R,
    /// Bytes still allowed.
    pub left: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            std::io::Error::other(format!(
                "the layer expands to more than {MAX_EXPANDED_BYTES} bytes"
            ))
        })?;
        Ok(n)
    }
}

/// A layer's bytes, refusing more than the descriptor declared.
pub struct BoundedBlob {
    data: Vec<u8>,
    declared: usize,
}

impl BoundedBlob {
    pub fn new(declared: usize) -> Self {
        Self {
            data: Vec::with_capacity(declared.min(64 << 20)),
            declared,
        }
    }

    /// The bytes, when there are exactly as many as declared.
    pub fn finish(self) -> Result<Vec<u8>, String> {
        if self.data.len() == self.declared {
            Ok(self.data)
        } else {
            Err(format!(
                "the registry sent {} bytes where the manifest declares {}",
                self.data.len(),
                self.declared
            ))
        }
    }
}

impl tokio::io::AsyncWrite for BoundedBlob {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.data.len() + buf.len() > self.declared {
            return std::task::Poll::Ready(Err(std::io::Error::other(format!(
                "more bytes than the {} the manifest declares",
                self.declared
            ))));
        }
        self.data.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_blob_is_exactly_the_size_its_descriptor_declares() {
        use tokio::io::AsyncWriteExt;
        let mut exact = BoundedBlob::new(4);
        exact.write_all(b"abcd").await.unwrap();
        assert_eq!(exact.finish().unwrap(), b"abcd");
        let mut endless = BoundedBlob::new(4);
        let error = endless.write_all(b"abcde").await.unwrap_err();
        assert!(error.to_string().contains("more bytes than the 4"), "{error}");
        let mut short = BoundedBlob::new(4);
        short.write_all(b"ab").await.unwrap();
        assert!(
            short
                .finish()
                .unwrap_err()
                .contains("sent 2 bytes where the manifest declares 4")
        );
    }

    #[test]
    fn foreign_negative_and_oversized_layers_are_not_downloaded() {
        let layer = |size: i64, urls: Option<Vec<String>>| OciDescriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".to_owned(),
            digest: "sha256:00".to_owned(),
            size,
            urls,
            ..Default::default()
        };
        assert_eq!(check_declared(&layer(10, None), false), Ok(10));
        let foreign = layer(10, Some(vec!["https://elsewhere.example/blob".to_owned()]));
        assert!(
            check_declared(&foreign, false)
                .unwrap_err()
                .contains("--allow-foreign-layers")
        );
        assert_eq!(check_declared(&foreign, true), Ok(10));
        assert!(
            check_declared(&layer(-1, None), false)
                .unwrap_err()
                .contains("negative")
        );
        let huge = i64::try_from(MAX_LAYER_BYTES + 1).unwrap();
        assert!(
            check_declared(&layer(huge, None), false)
                .unwrap_err()
                .contains("limit")
        );
    }

    #[test]
    fn expansion_stops_at_its_bound() {
        let mut reader = Bounded {
            inner: std::io::repeat(0),
            left: 1000,
        };
        let mut sink = Vec::new();
        let error = reader.read_to_end(&mut sink).unwrap_err();
        assert!(error.to_string().contains("expands to more than"), "{error}");
        assert!(sink.len() <= 1000 + 8192);
    }
}
