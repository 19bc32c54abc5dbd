//! Pages: how the records of 64 consecutive job ids share one sled value, so that sled
//! keeps one key per page instead of one per job (its per-key cost in memory, disk and
//! recovery time is what made a million jobs expensive). This file owns the page bytes:
//! reading one record's slot without decoding the others, and merging changes into a page
//! by copying byte slices. What a record body holds is `record.rs`'s business; which page a
//! key names is `keys.rs`'s.
//!
//! ```text
//! tree "pages"  key   = page_no = id / 64, u64, 8 bytes big-endian
//!               value = page:
//!   offset 0          bitmap   u64 little-endian  bit s (value 1 << s) set: slot s holds the
//!                                                 record of job id page_no * 64 + s
//!   offset 8          offsets  (n + 1) x u32 little-endian, n = popcount(bitmap):
//!                              offsets[i] = where the body of the i-th present slot (in
//!                              ascending slot order) starts, counted from the page's first
//!                              byte; offsets[n] = the page's length
//!   offset 12 + 4n    bodies   the n record bodies (record.rs), in slot order, back to back
//! ```
//!
//! Example: page 0 holding job 1 with the 1-byte body `aa` and job 3 with the 4-byte body
//! `bbbbbbbb` is `0a00000000000000` `14000000` `15000000` `19000000` `aa` `bbbbbbbb`
//! (25 bytes: bitmap 0b1010, offsets 20, 21, 25).
//!
//! Invariants:
//! 1. A stored page holds at least one record: a page whose last record goes is removed.
//! 2. `offsets` start right after themselves, grow strictly (a body is never empty) and end
//!    at the page's length; [`Page::parse`] refuses anything else as damage.

use qd_protocol::JobId;

use crate::store::StoreError;

/// Job ids per page.
pub const SLOTS: u64 = 64;

/// The page holding job `id`.
pub fn page_no(id: JobId) -> u64 {
    id / SLOTS
}

/// Job `id`'s slot in its page.
pub fn slot(id: JobId) -> u32 {
    (id % SLOTS) as u32
}

/// The id stored in `slot` of page `page_no`.
pub fn id_of(page_no: u64, slot: u32) -> JobId {
    page_no * SLOTS + u64::from(slot)
}

const BITMAP_LEN: usize = 8;

/// A parsed view of a stored page. Cheap: only the header is checked.
#[derive(Debug, Clone, Copy)]
pub struct Page<'a> {
    bytes: &'a [u8],
    bitmap: u64,
}

impl<'a> Page<'a> {
    /// Checks the header of page `page_no` (invariants 1 and 2).
    pub fn parse(page_no: u64, bytes: &'a [u8]) -> Result<Page<'a>, StoreError> {
        let damaged = |detail: String| StoreError::Corrupt {
            what: format!("page {page_no} (jobs {} ..): {detail}", id_of(page_no, 0)),
            hint: "the data dir is damaged; restore it from a backup".into(),
        };
        let bitmap = bytes
            .get(..BITMAP_LEN)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .ok_or_else(|| damaged(format!("{} bytes long, shorter than a header", bytes.len())))?;
        let n = bitmap.count_ones() as usize;
        if n == 0 {
            return Err(damaged("an empty page is stored".into()));
        }
        let header = BITMAP_LEN + 4 * (n + 1);
        if bytes.len() < header {
            return Err(damaged(format!("{} bytes cannot hold {n} offsets", bytes.len())));
        }
        let page = Page { bytes, bitmap };
        let mut prev = header;
        if page.offset(0) != header {
            return Err(damaged(format!("first body at {}, not {header}", page.offset(0))));
        }
        for i in 1..=n {
            let at = page.offset(i);
            if at <= prev || at > bytes.len() {
                return Err(damaged(format!("offset {i} is {at}, after {prev}")));
            }
            prev = at;
        }
        if prev != bytes.len() {
            return Err(damaged(format!("bodies end at {prev}, the page at {}", bytes.len())));
        }
        Ok(page)
    }

    fn offset(&self, i: usize) -> usize {
        let at = BITMAP_LEN + 4 * i;
        u32::from_le_bytes(self.bytes[at..at + 4].try_into().expect("4 bytes")) as usize
    }

    /// The body in `slot`, if any, without looking at the other bodies.
    pub fn get(&self, slot: u32) -> Option<&'a [u8]> {
        if self.bitmap & (1 << slot) == 0 {
            return None;
        }
        let i = (self.bitmap & ((1 << slot) - 1)).count_ones() as usize;
        Some(&self.bytes[self.offset(i)..self.offset(i + 1)])
    }

    /// Records in the page.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.bitmap.count_ones() as usize
    }

    /// Every (slot, body), in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &'a [u8])> + '_ {
        let mut bits = self.bitmap;
        let mut i = 0;
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let slot = bits.trailing_zeros();
            bits &= bits - 1;
            let body = &self.bytes[self.offset(i)..self.offset(i + 1)];
            i += 1;
            Some((slot, body))
        })
    }
}

/// Writes a page holding `slots` ((slot, body) in strictly ascending slot order, bodies
/// non-empty) into `out` (cleared first). Returns false, leaving `out` empty, if there is
/// no slot: such a page is not stored (invariant 1).
pub fn build<'b>(slots: impl Iterator<Item = (u32, &'b [u8])> + Clone, out: &mut Vec<u8>) -> bool {
    out.clear();
    let mut bitmap = 0u64;
    let mut total = 0usize;
    for (slot, body) in slots.clone() {
        debug_assert!(slot < SLOTS as u32 && bitmap >> slot == 0, "slots must ascend");
        debug_assert!(!body.is_empty(), "a record body is never empty");
        bitmap |= 1 << slot;
        total += body.len();
    }
    let n = bitmap.count_ones() as usize;
    if n == 0 {
        return false;
    }
    let header = BITMAP_LEN + 4 * (n + 1);
    out.reserve(header + total);
    out.extend_from_slice(&bitmap.to_le_bytes());
    let mut at = header;
    for (_, body) in slots.clone() {
        out.extend_from_slice(&(at as u32).to_le_bytes());
        at += body.len();
    }
    out.extend_from_slice(&(at as u32).to_le_bytes());
    for (_, body) in slots {
        out.extend_from_slice(body);
    }
    true
}

/// Merges `edits` ((slot, `Some(body)` to put or `None` to delete), slots strictly
/// ascending) into `old` (the stored page, if any), writing the new page into `out`.
/// Returns false if no record is left: the page is to be removed (invariant 1). Bodies
/// are copied as bytes; nothing is decoded.
pub fn merge(old: Option<&Page<'_>>, edits: &[(u32, Option<&[u8]>)], out: &mut Vec<u8>) -> bool {
    let mut slots: [Option<&[u8]>; SLOTS as usize] = [None; SLOTS as usize];
    if let Some(old) = old {
        for (slot, body) in old.iter() {
            slots[slot as usize] = Some(body);
        }
    }
    for &(slot, body) in edits {
        slots[slot as usize] = body;
    }
    build(slots.iter().enumerate().filter_map(|(s, b)| b.map(|b| (s as u32, b))), out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The example in the header, byte for byte.
    #[test]
    fn golden_page() {
        let mut out = vec![];
        let bodies: [(u32, &[u8]); 2] = [(1, &[0xaa]), (3, &[0xbb; 4])];
        assert!(build(bodies.iter().copied(), &mut out));
        assert_eq!(hex(&out), "0a00000000000000140000001500000019000000aabbbbbbbb");
        let page = Page::parse(0, &out).unwrap();
        assert_eq!(page.get(1), Some(&[0xaa][..]));
        assert_eq!(page.get(3), Some(&[0xbb; 4][..]));
        assert_eq!(page.get(0), None);
        assert_eq!(page.get(63), None);
        assert_eq!(page.len(), 2);
    }

    #[test]
    fn ids_map_to_pages_and_slots() {
        assert_eq!((page_no(0), slot(0)), (0, 0));
        assert_eq!((page_no(63), slot(63)), (0, 63));
        assert_eq!((page_no(64), slot(64)), (1, 0));
        assert_eq!(id_of(page_no(1_000_003), slot(1_000_003)), 1_000_003);
        assert_eq!(id_of(page_no(u64::MAX), slot(u64::MAX)), u64::MAX);
    }

    #[test]
    fn empty_pages_are_not_built_and_damage_is_refused() {
        let mut out = vec![1, 2, 3];
        assert!(!build(std::iter::empty(), &mut out));
        assert!(out.is_empty());
        let mut one = vec![];
        assert!(build([(5u32, &b"xyz"[..])].into_iter(), &mut one));
        // Deleting the only record leaves nothing to store.
        assert!(!merge(Some(&Page::parse(0, &one).unwrap()), &[(5, None)], &mut out));

        assert!(Page::parse(0, &[]).is_err());
        assert!(Page::parse(0, &[0; 8]).is_err(), "empty bitmap");
        assert!(Page::parse(0, &one[..one.len() - 1]).is_err(), "short body");
        let mut long = one.clone();
        long.push(0);
        assert!(Page::parse(0, &long).is_err(), "trailing byte");
        let mut bad_offset = one.clone();
        bad_offset[8] = 13; // first body must start at 16
        assert!(Page::parse(0, &bad_offset).is_err());
        let mut two_bits = one;
        two_bits[0] |= 1; // claims a second record without its offset
        let err = Page::parse(7, &two_bits).unwrap_err().to_string();
        assert!(err.contains("page 7 (jobs 448 ..)"), "{err}");
    }

    fn body() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 1..40)
    }

    proptest! {
        /// Random rounds of edits merged into one page agree with a map of slot -> body,
        /// for whole-page reads and single-slot reads alike.
        #[test]
        fn merges_match_a_model(
            rounds in proptest::collection::vec(
                proptest::collection::btree_map(0u32..64, proptest::option::of(body()), 0..20),
                1..12,
            ),
        ) {
            let mut model = BTreeMap::<u32, Vec<u8>>::new();
            let mut stored: Option<Vec<u8>> = None;
            for edits in rounds {
                let edits_ref: Vec<(u32, Option<&[u8]>)> =
                    edits.iter().map(|(s, b)| (*s, b.as_deref())).collect();
                for (slot, body) in &edits {
                    match body {
                        Some(b) => model.insert(*slot, b.clone()),
                        None => model.remove(slot),
                    };
                }
                let old = stored.as_ref().map(|b| Page::parse(9, b).unwrap());
                let mut out = vec![];
                let kept = merge(old.as_ref(), &edits_ref, &mut out);
                prop_assert_eq!(kept, !model.is_empty());
                stored = kept.then_some(out);
                let Some(bytes) = &stored else { continue };
                let page = Page::parse(9, bytes).unwrap();
                let all: BTreeMap<u32, Vec<u8>> =
                    page.iter().map(|(s, b)| (s, b.to_vec())).collect();
                prop_assert_eq!(&all, &model);
                for slot in 0..64 {
                    prop_assert_eq!(page.get(slot), model.get(&slot).map(Vec::as_slice));
                }
            }
        }
    }
}
