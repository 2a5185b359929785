//! etcd clients' `:authority`: etcdctl 3.4 (grpc-go dialing
//! `passthrough:///<endpoint>`) sends the whole endpoint URL, e.g.
//! `http://10.0.0.4:2379`, as the HTTP/2 `:authority` of its per-endpoint
//! calls (`endpoint status --cluster`, `endpoint health --cluster`). That
//! is no authority (RFC 3986), and the HTTP/2 layer resets such a stream
//! as malformed before any service sees it.
//!
//! [`Rewriter`] sits between the socket and the HTTP/2 server, on the bytes
//! the client sends: it passes every frame through as it is, except header
//! blocks (HEADERS and their CONTINUATIONs), which it decodes (HPACK, with
//! the client's dynamic table), and encodes again (with its own table,
//! which the server's decoder mirrors) after replacing an `:authority` of
//! the form `http://HOST:PORT` or `https://HOST:PORT` (a trailing `/`
//! allowed) by `HOST:PORT`. Any other `:authority` is left as it is, so the
//! server still refuses garbage. A header block larger than
//! `--grpc-max-request-bytes`, or one that does not decode, closes the
//! connection.

use std::io;

use axum::http::uri::Authority;

/// The HTTP/2 client preface's length.
const PREFACE_LEN: usize = 24;
/// An HTTP/2 frame header's length.
const FRAME_HEADER: usize = 9;
/// Frame types.
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
/// Frame flags.
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame payload the server accepts without a setting
/// (HTTP/2's default `SETTINGS_MAX_FRAME_SIZE`, which the gRPC server
/// keeps): rewritten header blocks are cut in frames of at most this.
const MAX_FRAME: usize = 16_384;
/// The HPACK dynamic table size the server's decoder allows (HTTP/2's
/// default `SETTINGS_HEADER_TABLE_SIZE`, which the gRPC server keeps).
const TABLE_SIZE: usize = 4096;

/// A header block being collected: its stream, whether it ends the
/// stream, and its bytes so far.
struct Block {
    stream: u32,
    end_stream: bool,
    bytes: Vec<u8>,
    /// Bytes its frames took on the wire, frame headers and padding
    /// included: what `--grpc-max-request-bytes` bounds, so a flood of
    /// empty CONTINUATION frames ends the connection.
    wire: usize,
}

/// The rewriting of one connection's inbound bytes.
pub(super) struct Rewriter {
    /// Bytes received and not yet handled.
    input: Vec<u8>,
    /// Bytes ready for the server.
    output: Vec<u8>,
    /// Preface bytes still to pass through.
    preface: usize,
    /// Payload bytes of the current non-header frame still to pass through.
    passing: usize,
    block: Option<Block>,
    decoder: loona_hpack::Decoder<'static>,
    encoder: loona_hpack::Encoder<'static>,
    /// Largest header block, bytes.
    max_block: usize,
}

fn bad(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

impl Rewriter {
    /// A rewriter refusing header blocks above `max_block` bytes.
    pub(super) fn new(max_block: usize) -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        Self {
            input: Vec::new(),
            output: Vec::new(),
            preface: PREFACE_LEN,
            passing: 0,
            block: None,
            decoder,
            encoder: loona_hpack::Encoder::new(),
            max_block,
        }
    }

    /// Takes bytes read from the client.
    ///
    /// # Errors
    ///
    /// A header block too large or that does not decode.
    pub(super) fn feed(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.input.extend_from_slice(bytes);
        let mut at = 0;
        let r = self.process(&mut at);
        self.input.drain(..at);
        r
    }

    /// Moves up to `buf.len()` rewritten bytes into `buf`; how many.
    pub(super) fn take(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.output.len());
        buf[..n].copy_from_slice(&self.output[..n]);
        self.output.drain(..n);
        n
    }

    /// Whether rewritten bytes wait.
    pub(super) fn ready(&self) -> bool {
        !self.output.is_empty()
    }

    fn process(&mut self, at: &mut usize) -> io::Result<()> {
        loop {
            let rest = &self.input[*at..];
            if self.preface > 0 || self.passing > 0 {
                let n = rest.len().min(self.preface.max(self.passing));
                if n == 0 {
                    return Ok(());
                }
                self.output.extend_from_slice(&rest[..n]);
                *at += n;
                if self.preface > 0 {
                    self.preface -= n;
                } else {
                    self.passing -= n;
                }
                continue;
            }
            if rest.len() < FRAME_HEADER {
                return Ok(());
            }
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let (kind, flags) = (rest[3], rest[4]);
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7FFF_FFFF;
            if kind != HEADERS && kind != CONTINUATION {
                if self.block.is_some() {
                    return Err(bad("a header block interrupted by another frame"));
                }
                self.output.extend_from_slice(&rest[..FRAME_HEADER]);
                *at += FRAME_HEADER;
                self.passing = len;
                continue;
            }
            if len > MAX_FRAME {
                // The server refuses it too (FRAME_SIZE_ERROR): not buffered.
                return Err(bad(format!(
                    "a header frame above HTTP/2's frame size ({MAX_FRAME} bytes)"
                )));
            }
            if len > self.max_block {
                return Err(bad("a header frame above --grpc-max-request-bytes"));
            }
            if rest.len() < FRAME_HEADER + len {
                return Ok(());
            }
            let payload = rest[FRAME_HEADER..FRAME_HEADER + len].to_vec();
            *at += FRAME_HEADER + len;
            self.header_frame(kind, flags, stream, &payload)?;
        }
    }

    /// A HEADERS or CONTINUATION frame.
    fn header_frame(&mut self, kind: u8, flags: u8, stream: u32, p: &[u8]) -> io::Result<()> {
        let fragment = if kind == HEADERS {
            if self.block.is_some() {
                return Err(bad("HEADERS inside a header block"));
            }
            let pad = if flags & PADDED != 0 {
                usize::from(*p.first().ok_or_else(|| bad("empty padded HEADERS"))?)
            } else {
                0
            };
            let start =
                usize::from(flags & PADDED != 0) + if flags & PRIORITY != 0 { 5 } else { 0 };
            let end = p
                .len()
                .checked_sub(pad)
                .filter(|e| *e >= start)
                .ok_or_else(|| bad("HEADERS padding longer than the frame"))?;
            self.block = Some(Block {
                stream,
                end_stream: flags & END_STREAM != 0,
                bytes: Vec::new(),
                wire: 0,
            });
            &p[start..end]
        } else {
            match &self.block {
                Some(b) if b.stream == stream => p,
                _ => return Err(bad("CONTINUATION outside its header block")),
            }
        };
        let block = self.block.as_mut().expect("set above");
        block.wire += FRAME_HEADER + p.len();
        if block.wire > self.max_block {
            return Err(bad(
                "a header block above --grpc-max-request-bytes (its frames' headers counted)",
            ));
        }
        block.bytes.extend_from_slice(fragment);
        if flags & END_HEADERS != 0 {
            let block = self.block.take().expect("set above");
            self.rewrite(&block)?;
        }
        Ok(())
    }

    /// Decodes a whole header block, mends its `:authority`, and writes it
    /// out again as HEADERS and CONTINUATION frames.
    fn rewrite(&mut self, block: &Block) -> io::Result<()> {
        // A few bytes can name a 4 KiB entry of the dynamic table: the
        // decoded list (counted as HTTP/2's SETTINGS_MAX_HEADER_LIST_SIZE
        // counts it, 32 bytes more per field) is bounded too.
        let max = self.max_block;
        let mut headers = Vec::new();
        let mut size = 0usize;
        self.decoder
            .decode_with_cb(&block.bytes, |n, v| {
                size = size.saturating_add(n.len() + v.len() + 32);
                if size <= max {
                    headers.push((n.into_owned(), v.into_owned()));
                }
            })
            .map_err(|e| bad(format!("an undecodable header block: {e}")))?;
        if size > max {
            return Err(bad(
                "a header block that decodes to more than --grpc-max-request-bytes",
            ));
        }
        for (name, value) in &mut headers {
            if name.as_slice() == b":authority" {
                if let Some(mended) = mend(value) {
                    *value = mended;
                }
            }
        }
        let encoded = self
            .encoder
            .encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let mut chunks = encoded.chunks(MAX_FRAME).peekable();
        let mut first = true;
        loop {
            let chunk = chunks.next().unwrap_or(&[]);
            let last = chunks.peek().is_none();
            let mut flags = if last { END_HEADERS } else { 0 };
            let kind = if first { HEADERS } else { CONTINUATION };
            if first && block.end_stream {
                flags |= END_STREAM;
            }
            let len = u32::try_from(chunk.len()).unwrap_or(0).to_be_bytes();
            self.output
                .extend_from_slice(&[len[1], len[2], len[3], kind, flags]);
            self.output.extend_from_slice(&block.stream.to_be_bytes());
            self.output.extend_from_slice(chunk);
            first = false;
            if last {
                return Ok(());
            }
        }
    }
}

/// The authority of `http://HOST:PORT[/]` or `https://HOST:PORT[/]`, when
/// `value` is such a URL and `HOST:PORT` a valid authority.
fn mend(value: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(value).ok()?;
    let rest = text
        .strip_prefix("http://")
        .or_else(|| text.strip_prefix("https://"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let authority: Authority = rest.parse().ok()?;
    (authority.as_str() == rest && !rest.contains('@')).then(|| rest.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_urls_around_a_valid_authority_are_mended() {
        assert_eq!(mend(b"http://10.0.0.4:2379").unwrap(), b"10.0.0.4:2379");
        assert_eq!(mend(b"https://node-1:2379/").unwrap(), b"node-1:2379");
        assert_eq!(mend(b"http://[::1]:2379").unwrap(), b"[::1]:2379");
        for keep in [
            &b"10.0.0.4:2379"[..],
            b"unix:///tmp/s",
            b"http://a b:1",
            b"http://x/y",
            b"http://user@host:1",
            b"ftp://host:1",
            b"http://",
            b"\xff",
        ] {
            assert_eq!(mend(keep), None, "{}", String::from_utf8_lossy(keep));
        }
    }

    /// A client's bytes: the preface, a SETTINGS frame, and HEADERS
    /// frames of `blocks` (each cut in two: HEADERS + CONTINUATION).
    fn client_bytes(blocks: &[Vec<(Vec<u8>, Vec<u8>)>]) -> Vec<u8> {
        let mut enc = loona_hpack::Encoder::new();
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend_from_slice(&[0, 0, 6, 0x4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100]);
        for (i, headers) in blocks.iter().enumerate() {
            let b = enc.encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
            let (a, c) = b.split_at(b.len() / 2);
            let stream = u32::try_from(2 * i + 1).unwrap().to_be_bytes();
            for (kind, flags, part) in [(HEADERS, END_STREAM, a), (CONTINUATION, END_HEADERS, c)] {
                let len = u32::try_from(part.len()).unwrap().to_be_bytes();
                out.extend_from_slice(&[len[1], len[2], len[3], kind, flags]);
                out.extend_from_slice(&stream);
                out.extend_from_slice(part);
            }
        }
        out
    }

    /// The header blocks in a server's view of `bytes`.
    fn server_view(bytes: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut dec = loona_hpack::Decoder::new();
        let mut at = PREFACE_LEN;
        let mut blocks = Vec::new();
        let mut block = Vec::new();
        while at < bytes.len() {
            let len = usize::from(bytes[at]) << 16
                | usize::from(bytes[at + 1]) << 8
                | usize::from(bytes[at + 2]);
            let (kind, flags) = (bytes[at + 3], bytes[at + 4]);
            let payload = &bytes[at + 9..at + 9 + len];
            if kind == HEADERS || kind == CONTINUATION {
                block.extend_from_slice(payload);
                if flags & END_HEADERS != 0 {
                    blocks.push(dec.decode(&block).unwrap());
                    block.clear();
                }
            }
            at += 9 + len;
        }
        blocks
    }

    fn h(n: &str, v: &str) -> (Vec<u8>, Vec<u8>) {
        (n.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    #[test]
    fn url_authorities_are_mended_in_any_cut_and_the_rest_kept() {
        let seed: u64 = std::env::var("SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random);
        println!("SEED={seed}");
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed);
        let block = |auth: &str, path: &str| {
            vec![
                h(":method", "POST"),
                h(":scheme", "http"),
                h(":path", path),
                h(":authority", auth),
                h("te", "trailers"),
            ]
        };
        let blocks = vec![
            block("http://127.0.0.1:2379", "/etcdserverpb.Maintenance/Status"),
            block("http://127.0.0.1:2379", "/etcdserverpb.KV/Range"),
            block("127.0.0.1:2379", "/etcdserverpb.KV/Range"),
            block("http://bad host", "/etcdserverpb.KV/Put"),
        ];
        let bytes = client_bytes(&blocks);
        let mut r = Rewriter::new(1 << 20);
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let n = rand::Rng::gen_range(&mut rng, 1..=40).min(bytes.len() - at);
            r.feed(&bytes[at..at + n]).unwrap();
            at += n;
            let mut buf = [0u8; 7];
            while r.ready() {
                let k = r.take(&mut buf);
                out.extend_from_slice(&buf[..k]);
            }
        }
        let mut expected = blocks.clone();
        expected[0][3].1 = b"127.0.0.1:2379".to_vec();
        expected[1][3].1 = b"127.0.0.1:2379".to_vec();
        assert_eq!(server_view(&out), expected);
        assert_eq!(&out[..PREFACE_LEN + 15], &bytes[..PREFACE_LEN + 15]);
    }

    /// A client preface, then HEADERS on stream 1 carrying `block`, cut in
    /// one HEADERS frame and CONTINUATIONs of `frame` bytes (at least 1).
    fn raw_block(block: &[u8], frame: usize) -> Vec<u8> {
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let parts: Vec<&[u8]> = if block.is_empty() {
            vec![&[][..]]
        } else {
            block.chunks(frame).collect()
        };
        for (i, part) in parts.iter().enumerate() {
            let kind = if i == 0 { HEADERS } else { CONTINUATION };
            let flags = if i + 1 == parts.len() { END_HEADERS } else { 0 };
            let len = u32::try_from(part.len()).unwrap().to_be_bytes();
            out.extend_from_slice(&[len[1], len[2], len[3], kind, flags, 0, 0, 0, 1]);
            out.extend_from_slice(part);
        }
        out
    }

    #[test]
    fn a_small_block_that_decodes_to_a_huge_header_list_closes_the_connection() {
        // One 4000-byte header into the dynamic table, then 60 000 one-byte
        // references to it: 64 KiB on the wire, 240 MB decoded.
        let mut block = vec![0x40, 3];
        block.extend_from_slice(b"x-a");
        block.extend_from_slice(&[0x7F, 0xA1, 0x1E]); // 127 + 3873 = 4000
        block.extend_from_slice(&[b'v'; 4000]);
        block.extend_from_slice(&[0x80 | 62; 60_000]);
        let mut r = Rewriter::new(64 << 10);
        let e = r.feed(&raw_block(&block, MAX_FRAME)).unwrap_err();
        assert!(e.to_string().contains("decodes to more than"), "{e}");
        // Nothing of the block went on to the server.
        assert_eq!(r.output.len(), PREFACE_LEN);
    }

    #[test]
    fn a_flood_of_empty_continuations_closes_the_connection() {
        // The block's bytes stay 1, but every frame is 9 more bytes read.
        let mut bytes = raw_block(&[0x82], MAX_FRAME);
        bytes[PREFACE_LEN + 4] = 0; // no END_HEADERS on the HEADERS frame
        let mut r = Rewriter::new(64 << 10);
        r.feed(&bytes).unwrap();
        let empty = [0, 0, 0, CONTINUATION, 0, 0, 0, 0, 1];
        let flood: Vec<u8> = empty.iter().copied().cycle().take(9 * 100_000).collect();
        let e = r.feed(&flood).unwrap_err();
        assert!(e.to_string().contains("--grpc-max-request-bytes"), "{e}");
    }

    #[test]
    fn a_header_frame_above_the_servers_frame_size_closes_the_connection() {
        // The HTTP/2 server refuses such a frame itself (FRAME_SIZE_ERROR):
        // it is not buffered whole and cut into frames it would take.
        let mut block = vec![0x40, 3];
        block.extend_from_slice(b"x-a");
        block.extend_from_slice(&[0x7F, 0xA1, 0x9B, 0x01]); // 127 + 19 873
        block.extend_from_slice(&[b'v'; 20_000]);
        let e = Rewriter::new(1 << 20)
            .feed(&raw_block(&block, 1 << 20))
            .unwrap_err();
        assert!(e.to_string().contains("frame size"), "{e}");
        // Cut in frames the server takes, the same block passes.
        let mut r = Rewriter::new(1 << 20);
        r.feed(&raw_block(&block, MAX_FRAME)).unwrap();
        assert!(r.ready());
    }

    #[test]
    fn oversized_or_garbled_header_blocks_close_the_connection() {
        let bytes = client_bytes(&[vec![h(":authority", &"x".repeat(300))]]);
        assert!(Rewriter::new(100).feed(&bytes).is_err());
        let mut garbled = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        garbled.extend_from_slice(&[0, 0, 1, HEADERS, END_HEADERS, 0, 0, 0, 1, 0xFF]);
        assert!(Rewriter::new(1 << 20).feed(&garbled).is_err());
    }
}
