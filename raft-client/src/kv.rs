//! The key-value calls: get, put, delete, compare-and-set, listings.

use bytes::Bytes;
use percent_encoding::{percent_decode_str, percent_encode, utf8_percent_encode, AsciiSet};
use reqwest::Method;
use serde::Deserialize;

use crate::builder::IdempotencyKeys;
use crate::client::{Client, Request, Safety};
use crate::error::{Error, Result};

/// Bytes of a key sent as they are in a URL path: unreserved characters.
/// `/` is escaped too, so no key is taken for a path with `..` segments.
const KEY: &AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Bytes of a query value sent as they are.
const QUERY: &AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ReadConsistency {
    /// Confirmed with a quorum: sees every write acknowledged before it
    /// started.
    #[default]
    Linearizable,
    /// Served by the leader under its lease (linearizable within the
    /// clock-drift bound), without a quorum round.
    Lease,
    /// Whatever the answering node applied: may be behind.
    Stale,
}

impl ReadConsistency {
    /// The `consistency` query value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadConsistency::Linearizable => "linearizable",
            ReadConsistency::Lease => "lease",
            ReadConsistency::Stale => "stale",
        }
    }
}

impl std::str::FromStr for ReadConsistency {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "linearizable" => Ok(Self::Linearizable),
            "lease" => Ok(Self::Lease),
            "stale" => Ok(Self::Stale),
            other => Err(Error::Config(format!(
                "consistency must be linearizable, lease or stale; got {other:?}"
            ))),
        }
    }
}

/// A value and its revision (the log index of the write that set it).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Entry {
    /// The value, byte for byte.
    pub value: Bytes,
    /// Its revision (`ETag`).
    pub rev: u64,
}

/// A condition on the key's current revision for a write to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Precondition {
    /// Unconditional.
    #[default]
    None,
    /// Only if the key is at this revision (`If-Match: "N"`).
    Revision(u64),
    /// Only if the key does not exist (`If-None-Match: *`).
    Absent,
}

/// Options of a write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriteOptions {
    /// Its precondition.
    pub precondition: Precondition,
    /// Its idempotency key (1 to 256 visible ASCII characters). `None`:
    /// the client's [`IdempotencyKeys`] setting decides.
    pub idempotency_key: Option<String>,
}

impl WriteOptions {
    /// Sets the precondition.
    pub fn precondition(mut self, p: Precondition) -> Self {
        self.precondition = p;
        self
    }

    /// Sets the idempotency key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }
}

/// What a compare-and-set did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasResult {
    /// Written: the new revision.
    Swapped(u64),
    /// Not written: the key was at another revision (`None`: absent).
    Mismatch(Option<u64>),
}

/// Which keys a listing returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListOptions {
    /// Keys starting with this.
    pub prefix: String,
    /// Items per page (the node's default, 100, when `None`; at most its
    /// `--max-list-limit`).
    pub limit: Option<usize>,
    /// Where to go on: a previous page's [`ListPage::next`].
    pub cursor: Option<String>,
    /// Keys and revisions only, no values.
    pub keys_only: bool,
    /// How fresh.
    pub consistency: ReadConsistency,
}

impl ListOptions {
    /// Keys starting with `prefix`.
    pub fn prefix(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            ..Self::default()
        }
    }

    /// Sets the page size.
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }

    /// Sets the cursor.
    pub fn cursor(mut self, c: impl Into<String>) -> Self {
        self.cursor = Some(c.into());
        self
    }

    /// Leaves the values out.
    pub fn keys_only(mut self, yes: bool) -> Self {
        self.keys_only = yes;
        self
    }

    /// Sets the consistency.
    pub fn consistency(mut self, c: ReadConsistency) -> Self {
        self.consistency = c;
        self
    }

    fn query(&self) -> String {
        let mut q = format!("?prefix={}", utf8_percent_encode(&self.prefix, QUERY));
        if let Some(l) = self.limit {
            q.push_str(&format!("&limit={l}"));
        }
        if let Some(c) = &self.cursor {
            q.push_str(&format!("&cursor={}", utf8_percent_encode(c, QUERY)));
        }
        if self.keys_only {
            q.push_str("&keys_only=true");
        }
        if self.consistency != ReadConsistency::Linearizable {
            q.push_str(&format!("&consistency={}", self.consistency.as_str()));
        }
        q
    }
}

/// One key of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Item {
    /// The key, byte for byte.
    pub key: Bytes,
    /// Its revision.
    pub rev: u64,
    /// Its value (`None` for a keys-only listing).
    pub value: Option<Bytes>,
}

/// One page of a listing, in key order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListPage {
    /// The items.
    pub items: Vec<Item>,
    /// Whether more keys follow.
    pub more: bool,
    /// The cursor of the next page, when `more`.
    pub next: Option<String>,
}

#[derive(Deserialize)]
struct RawPage {
    items: Vec<RawItem>,
    more: bool,
    next: Option<String>,
}

#[derive(Deserialize)]
struct RawItem {
    key: String,
    rev: u64,
    value: Option<String>,
    value_base64: Option<String>,
}

#[derive(Deserialize)]
struct Rev {
    rev: u64,
}

/// Pages through a listing: [`Client::lister`].
#[derive(Debug)]
pub struct Lister {
    client: Client,
    opts: ListOptions,
    done: bool,
}

impl Lister {
    /// The next page, or `None` after the last.
    ///
    /// # Errors
    ///
    /// As [`Client::list`]; the lister can be asked again.
    pub async fn next_page(&mut self) -> Result<Option<ListPage>> {
        if self.done {
            return Ok(None);
        }
        let page = self.client.list(&self.opts).await?;
        match (&page.next, page.more) {
            (Some(n), true) => self.opts.cursor = Some(n.clone()),
            _ => self.done = true,
        }
        Ok(Some(page))
    }
}

/// The URL path of a key.
pub(crate) fn key_path(key: &[u8]) -> Result<String> {
    if key == b"." || key == b".." {
        return Err(Error::Config(
            "the keys `.` and `..` cannot be sent in a URL path".into(),
        ));
    }
    Ok(format!("/v1/kv/{}", percent_encode(key, KEY)))
}

impl Client {
    /// Reads `key` linearizably: `None` when it is absent.
    ///
    /// # Errors
    ///
    /// See [`Error`]; reads are retried after any failure the retry policy
    /// allows.
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Entry>> {
        self.get_with(key, ReadConsistency::Linearizable).await
    }

    /// Reads `key` at the given consistency.
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub async fn get_with(
        &self,
        key: impl AsRef<[u8]>,
        consistency: ReadConsistency,
    ) -> Result<Option<Entry>> {
        let mut path = key_path(key.as_ref())?;
        if consistency != ReadConsistency::Linearizable {
            path.push_str(&format!("?consistency={}", consistency.as_str()));
        }
        let a = self
            .execute(&Request::new(Method::GET, path, Safety::Read))
            .await?;
        match a.status.as_u16() {
            200 => {
                let rev = a.rev().ok_or_else(|| {
                    Error::InvalidAnswer("a read answered without an ETag".into())
                })?;
                Ok(Some(Entry { value: a.body, rev }))
            }
            404 => Ok(None),
            _ => Err(a.into_error()),
        }
    }

    /// Writes `value` at `key` unconditionally; returns its revision.
    ///
    /// # Errors
    ///
    /// See [`Error`]; [`Error::outcome`] tells whether it may have been
    /// applied.
    pub async fn put(&self, key: impl AsRef<[u8]>, value: impl Into<Bytes>) -> Result<u64> {
        self.put_with(key, value, &WriteOptions::default()).await
    }

    /// Writes `value` at `key` with a precondition and/or idempotency key.
    ///
    /// # Errors
    ///
    /// [`Error::PreconditionFailed`] when the precondition does not hold;
    /// otherwise see [`Error`].
    pub async fn put_with(
        &self,
        key: impl AsRef<[u8]>,
        value: impl Into<Bytes>,
        opts: &WriteOptions,
    ) -> Result<u64> {
        let req = self
            .write_request(Method::PUT, key.as_ref(), opts)?
            .body(value);
        let a = self.execute(&req).await?;
        if a.status.is_success() {
            return match a.rev() {
                Some(r) => Ok(r),
                None => a.json::<Rev>().map(|r| r.rev),
            };
        }
        Err(a.into_error())
    }

    /// Deletes `key`: its delete revision, or `None` when it was absent.
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<Option<u64>> {
        self.delete_with(key, &WriteOptions::default()).await
    }

    /// [`Client::delete`] with a precondition and/or idempotency key.
    ///
    /// # Errors
    ///
    /// [`Error::PreconditionFailed`] when the precondition does not hold;
    /// otherwise see [`Error`].
    pub async fn delete_with(
        &self,
        key: impl AsRef<[u8]>,
        opts: &WriteOptions,
    ) -> Result<Option<u64>> {
        let req = self.write_request(Method::DELETE, key.as_ref(), opts)?;
        let a = self.execute(&req).await?;
        match a.status.as_u16() {
            200..=299 => a.json::<Rev>().map(|r| Some(r.rev)),
            404 => Ok(None),
            _ => Err(a.into_error()),
        }
    }

    /// Writes `value` only if `key` is at revision `expected` (`None`: only
    /// if it is absent).
    ///
    /// # Errors
    ///
    /// See [`Error`] (a mismatch is `Ok(CasResult::Mismatch)`).
    pub async fn compare_and_set(
        &self,
        key: impl AsRef<[u8]>,
        expected: Option<u64>,
        value: impl Into<Bytes>,
    ) -> Result<CasResult> {
        let precondition = match expected {
            Some(rev) => Precondition::Revision(rev),
            None => Precondition::Absent,
        };
        let opts = WriteOptions::default().precondition(precondition);
        match self.put_with(key, value, &opts).await {
            Ok(rev) => Ok(CasResult::Swapped(rev)),
            Err(Error::PreconditionFailed { current_rev }) => Ok(CasResult::Mismatch(current_rev)),
            Err(e) => Err(e),
        }
    }

    /// One page of keys in key order.
    ///
    /// # Errors
    ///
    /// See [`Error`]; 400 for a limit beyond the node's `--max-list-limit`
    /// or a cursor that is no `next`.
    pub async fn list(&self, opts: &ListOptions) -> Result<ListPage> {
        let path = format!("/v1/kv{}", opts.query());
        let a = self
            .execute(&Request::new(Method::GET, path, Safety::Read))
            .await?;
        if !a.status.is_success() {
            return Err(a.into_error());
        }
        let raw: RawPage = a.json()?;
        let items = raw
            .items
            .into_iter()
            .map(decode_item)
            .collect::<Result<Vec<_>>>()?;
        Ok(ListPage {
            items,
            more: raw.more,
            next: raw.next,
        })
    }

    /// Every page of a listing, one at a time, following the `next`
    /// cursors from `opts.cursor` (or the start).
    pub fn lister(&self, opts: ListOptions) -> Lister {
        Lister {
            client: self.clone(),
            opts,
            done: false,
        }
    }

    fn write_request(&self, method: Method, key: &[u8], opts: &WriteOptions) -> Result<Request> {
        let token = match (&opts.idempotency_key, self.idempotency()) {
            (Some(k), _) => Some(k.clone()),
            (None, IdempotencyKeys::Generate) => Some(format!("{:032x}", rand::random::<u128>())),
            (None, _) => None,
        };
        let safety = if token.is_some() {
            Safety::KeyedWrite
        } else {
            Safety::Write
        };
        let mut req = Request::new(method, key_path(key)?, safety);
        if let Some(t) = &token {
            if t.is_empty() || t.len() > 256 {
                return Err(Error::Config(
                    "an idempotency key has 1 to 256 characters".into(),
                ));
            }
            req = req.header("idempotency-key", t)?;
        }
        req = match opts.precondition {
            Precondition::None => req,
            Precondition::Revision(r) => req.header("if-match", &format!("\"{r}\""))?,
            Precondition::Absent => req.header("if-none-match", "*")?,
        };
        Ok(req)
    }
}

fn decode_item(raw: RawItem) -> Result<Item> {
    use base64::Engine;
    let key: Vec<u8> = percent_decode_str(&raw.key).collect();
    let value = match (raw.value, raw.value_base64) {
        (Some(v), _) => Some(Bytes::from(v)),
        (None, Some(b)) => Some(Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| Error::InvalidAnswer(format!("value_base64: {e}")))?,
        )),
        (None, None) => None,
    };
    Ok(Item {
        key: key.into(),
        rev: raw.rev,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_escaped_byte_for_byte() {
        assert_eq!(key_path(b"a/b c").unwrap(), "/v1/kv/a%2Fb%20c");
        assert_eq!(key_path(&[0, 0xff]).unwrap(), "/v1/kv/%00%FF");
        assert!(key_path(b"..").is_err());
        assert_eq!(key_path(b"...").unwrap(), "/v1/kv/...");
    }

    #[test]
    fn listing_items_decode_text_binary_and_keys_only() {
        let page: RawPage = serde_json::from_str(
            r#"{"items":[{"key":"a%2Fb","rev":3,"value":"x"},{"key":"%FF","rev":4,"value_base64":"AAE="},{"key":"k","rev":5}],"more":true,"next":"azE"}"#,
        )
        .unwrap();
        let items: Vec<Item> = page
            .items
            .into_iter()
            .map(decode_item)
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(&items[0].key[..], b"a/b");
        assert_eq!(items[0].value.as_deref(), Some(&b"x"[..]));
        assert_eq!(&items[1].key[..], &[0xff]);
        assert_eq!(items[1].value.as_deref(), Some(&[0u8, 1][..]));
        assert_eq!(items[2].value, None);
    }

    #[test]
    fn list_queries_escape_the_prefix_and_cursor() {
        let q = ListOptions::prefix("a b&c")
            .limit(5)
            .cursor("x+y")
            .keys_only(true)
            .consistency(ReadConsistency::Stale)
            .query();
        assert_eq!(
            q,
            "?prefix=a%20b%26c&limit=5&cursor=x%2By&keys_only=true&consistency=stale"
        );
    }
}
