//! A Bloom filter over the id hashes of the outcomes a user's retry window
//! holds: it answers "certainly not remembered" for almost every request, so
//! the common case (a request never seen before) touches one cache line
//! instead of a hash index's control bytes and slots, and nothing has to be
//! removed when an outcome is forgotten.
//!
//! A blocked filter: each hash picks one 64-byte block and sets one bit in
//! each of its eight words, so a lookup is a single cache line. Sized at 16
//! bits per id, it says "maybe" for about 0.09% of ids it never saw when
//! full (and fewer on the way there), which then cost a scan of the user's
//! records. Forgotten ids are never taken out; the window rebuilds the
//! filter from the records it holds once as many ids went in as it was sized
//! for, sized for twice what it then holds, so rebuilds cost a constant per
//! request and the filter stays at most about four bytes per remembered
//! outcome.

/// One cache line of bits: eight words, one bit of each set per id.
#[derive(Clone, Copy, Default)]
#[repr(align(64))]
struct Block([u64; 8]);

const BLOCK_BYTES: usize = std::mem::size_of::<Block>();

/// Bits per id at the filter's capacity.
const BITS_PER_ID: usize = 16;

const IDS_PER_BLOCK: usize = BLOCK_BYTES * 8 / BITS_PER_ID;

/// Odd multipliers, one per word: each turns the hash's low half into an
/// independent-looking bit position in its word.
const SALTS: [u32; 8] = [
    0x47b6_137b,
    0x4497_4d91,
    0x8824_ad5b,
    0xa2b7_289d,
    0x7054_95c7,
    0x2df1_424b,
    0x9efc_4947,
    0x5c6b_fb31,
];

pub(super) struct IdFilter {
    blocks: Vec<Block>,
    /// Ids added since the filter was last emptied, forgotten ones included.
    added: usize,
}

impl IdFilter {
    pub(super) const fn new() -> Self {
        Self {
            blocks: Vec::new(),
            added: 0,
        }
    }

    /// Whether as many ids went in as the filter was sized for: past this
    /// its false positives climb, so the window rebuilds it first.
    pub(super) fn is_full(&self) -> bool {
        self.added >= self.blocks.len() * IDS_PER_BLOCK
    }

    /// Whether an id with this hash may have been added (false: certainly not).
    pub(super) fn may_contain(&self, hash: u64) -> bool {
        self.blocks
            .get(self.block_of(hash))
            .is_some_and(|block| block.0.iter().zip(masks(hash)).all(|(w, m)| w & m == m))
    }

    /// Adds an id's hash. On an empty (unsized) filter it does nothing, so
    /// the window must [`IdFilter::reset`] a full filter before adding.
    pub(super) fn add(&mut self, hash: u64) {
        let at = self.block_of(hash);
        if let Some(block) = self.blocks.get_mut(at) {
            for (w, m) in block.0.iter_mut().zip(masks(hash)) {
                *w |= m;
            }
            self.added += 1;
        }
    }

    /// Empties the filter and sizes it for `ids` ids.
    pub(super) fn reset(&mut self, ids: usize) {
        let blocks = ids.div_ceil(IDS_PER_BLOCK).max(1);
        self.blocks.clear();
        if self.blocks.capacity() > 2 * blocks {
            self.blocks.shrink_to(blocks);
        }
        self.blocks.resize(blocks, Block::default());
        self.added = 0;
    }

    /// Memory the filter holds.
    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.blocks.capacity() * BLOCK_BYTES
    }

    /// The block for a hash: its high half scaled to the block count
    /// (multiply and shift, not a remainder), leaving the low half for the
    /// bits within the block.
    fn block_of(&self, hash: u64) -> usize {
        (((hash >> 32) * self.blocks.len() as u64) >> 32) as usize
    }
}

fn masks(hash: u64) -> [u64; 8] {
    let low = hash as u32;
    SALTS.map(|salt| 1 << (low.wrapping_mul(salt) >> 26))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(from: u64) -> impl Iterator<Item = u64> {
        let state = ahash::RandomState::with_seeds(1, 2, 3, 4);
        (from..).map(move |i| state.hash_one(i))
    }

    #[test]
    fn an_added_id_is_always_found() {
        let mut filter = IdFilter::new();
        assert!(!filter.may_contain(42), "an empty filter holds nothing");
        // Sized in whole blocks: room for 1,000 is room for 1,024.
        filter.reset(1000);
        for (n, h) in hashes(0).take(1024).enumerate() {
            assert!(!filter.is_full(), "full after {n} of 1,024");
            filter.add(h);
            assert!(filter.may_contain(h), "id {n}");
        }
        assert!(hashes(0).take(1024).all(|h| filter.may_contain(h)));
        assert!(filter.is_full());
    }

    #[test]
    fn a_full_filter_rarely_claims_an_id_it_never_saw() {
        let mut filter = IdFilter::new();
        filter.reset(2000);
        for h in hashes(0).take(2000) {
            filter.add(h);
        }
        let probes = 200_000;
        let claimed = hashes(1 << 40)
            .take(probes)
            .filter(|&h| filter.may_contain(h))
            .count();
        // About 0.09% expected at 16 bits per id; 0.2% would mean the bits
        // within a block are not independent.
        assert!(
            claimed * 500 < probes,
            "{claimed} of {probes} unseen ids claimed"
        );
    }

    #[test]
    fn reset_empties_and_resizes() {
        let mut filter = IdFilter::new();
        filter.reset(10_000);
        let big = filter.bytes();
        for h in hashes(0).take(10_000) {
            filter.add(h);
        }
        filter.reset(10);
        assert!(
            filter.bytes() < big / 10,
            "{} bytes for ten ids",
            filter.bytes()
        );
        assert!(!filter.is_full());
        assert!(
            hashes(0)
                .take(10_000)
                .filter(|&h| filter.may_contain(h))
                .count()
                == 0
        );
    }
}
