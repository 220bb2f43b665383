//! A hierarchical hashed timing wheel: O(1) insert and cancel, amortised O(1) expiry.
//!
//! Layout (the Varghese & Lauck scheme, as in the Linux kernel and tokio): time is cut
//! into ticks of `tick_ns` (1 ms by default); [`LEVELS`] levels of 64 slots each, level
//! `l` slots spanning `64^l` ticks, so 11 levels cover the whole `u64` range and no
//! deadline ever needs clamping or an overflow list. A timer lives at the level of the
//! highest 6-bit group in which its tick differs from the wheel's current tick; when
//! time reaches a slot above level 0 its timers cascade down, each at most once per
//! level, so every timer costs O(levels) = O(1) work in total. A 64-bit occupancy
//! bitmap per level finds the next busy slot without scanning empty ones.
//!
//! Timers are nodes of intrusive doubly-linked lists in one slab (`Vec`), addressed by
//! a [`TimerKey`] of (index, generation): cancel is O(1) and a stale key (a timer that
//! already fired or was cancelled, its slab entry maybe reused) is refused.
//!
//! Memory: [`TimingWheel::ENTRY_BYTES`] per slab entry, that is 24 bytes beyond the
//! item for any `T` with a niche (references, `Arc`, `Box`, `NonZero*`, enums ...;
//! the scheduler's timer, a `CheckId` with its timing, makes a 64-byte entry), plus
//! up to `align_of::<T>()` bytes otherwise. The slab keeps its high-water mark (freed entries are reused, never returned) and, like
//! any `Vec`, may hold up to twice that in spare capacity while growing. The fixed part
//! (slot heads, bitmaps, per-slot minima) is about 3.4 KiB.

/// Default tick: 1 ms, finer than any probe interval and jitter worth having.
pub const DEFAULT_TICK_NS: u64 = 1_000_000;

/// Levels of the wheel: 11 x 6 bits of ticks cover all of `u64`.
pub const LEVELS: usize = 11;
const SLOTS: usize = 64;
const SLOT_BITS: u32 = 6;
const NIL: u32 = u32::MAX;
const FREE: u16 = u16::MAX;

/// Names one timer in a [`TimingWheel`], to cancel it. Generation-checked: a key whose
/// timer already fired or was cancelled never matches a later timer reusing the slot
/// (until that slab entry has been reused 2^32 times).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerKey {
    index: u32,
    generation: u32,
}

impl TimerKey {
    /// The slab entry this key names (see [`TimingWheel::key_at`]).
    #[must_use]
    pub fn index(self) -> u32 {
        self.index
    }
}

struct Entry<T> {
    /// Exact deadline in ns; the item never fires before it.
    deadline: u64,
    prev: u32,
    /// Next in the slot's list, or in the free list when vacant.
    next: u32,
    generation: u32,
    /// `level * 64 + slot` while armed, [`FREE`] when vacant.
    slot: u16,
    value: Option<T>,
}

/// Timers keyed by a `u64` nanosecond deadline, fired by [`advance`](Self::advance)
/// in tick order. Exists so the scheduler can keep a million checks' next probes with
/// O(1) work per probe instead of a heap's O(log n). Pure: it never reads a clock.
pub struct TimingWheel<T> {
    tick_ns: u64,
    /// Current tick: every tick before it has been fully expired.
    elapsed: u64,
    entries: Vec<Entry<T>>,
    free_head: u32,
    len: usize,
    heads: Vec<u32>,
    occupied: [u64; LEVELS],
    /// Lower bound of the deadlines in each level-0 slot (`u64::MAX` when empty), so
    /// `next_deadline` is exact within a tick and repeated `advance` calls inside one
    /// tick skip slots with nothing due.
    l0_min: [u64; SLOTS],
    /// Entries fired by the current advance, unlinked and not yet released or
    /// re-armed (kept for its allocation).
    fired: Vec<u32>,
}

impl<T> Default for TimingWheel<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> std::fmt::Debug for TimingWheel<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimingWheel")
            .field("tick_ns", &self.tick_ns)
            .field("elapsed_ticks", &self.elapsed)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl<T> TimingWheel<T> {
    /// Bytes of one slab entry holding a `T` (the per-timer memory cost), for capacity
    /// planning.
    pub const ENTRY_BYTES: usize = std::mem::size_of::<Entry<T>>();

    /// An empty wheel with the default 1 ms tick.
    #[must_use]
    pub fn new() -> Self {
        Self::with_tick(DEFAULT_TICK_NS)
    }

    /// An empty wheel whose tick is `tick_ns` nanoseconds (at least 1). A coarser tick
    /// means fewer cascades; the wheel is never early and at most one tick late.
    #[must_use]
    pub fn with_tick(tick_ns: u64) -> Self {
        Self {
            tick_ns: tick_ns.max(1),
            elapsed: 0,
            entries: Vec::new(),
            free_head: NIL,
            len: 0,
            heads: vec![NIL; LEVELS * SLOTS],
            occupied: [0; LEVELS],
            l0_min: [u64::MAX; SLOTS],
            fired: Vec::new(),
        }
    }

    /// Reserve slab room for `additional` more timers, to avoid regrowth while loading.
    pub fn reserve(&mut self, additional: usize) {
        self.entries.reserve(additional);
    }

    /// The tick length in nanoseconds.
    #[must_use]
    pub fn tick_ns(&self) -> u64 {
        self.tick_ns
    }

    /// Armed timers.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no timer is armed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Arm a timer firing at `deadline_ns` (a deadline already past fires on the next
    /// `advance`).
    ///
    /// # Panics
    /// If more than `u32::MAX - 1` timers are armed at once (like `Vec` capacity
    /// overflow; that many timers would need over 100 GiB).
    pub fn insert(&mut self, deadline_ns: u64, item: T) -> TimerKey {
        let index = if self.free_head != NIL {
            let index = self.free_head;
            let e = &mut self.entries[index as usize];
            self.free_head = e.next;
            e.deadline = deadline_ns;
            e.value = Some(item);
            index
        } else {
            let index = u32::try_from(self.entries.len())
                .ok()
                .filter(|&i| i != NIL)
                .unwrap_or_else(|| panic!("timing wheel: more than {} timers", NIL - 1));
            self.entries.push(Entry {
                deadline: deadline_ns,
                prev: NIL,
                next: NIL,
                generation: 0,
                slot: FREE,
                value: Some(item),
            });
            index
        };
        self.place(index);
        self.len += 1;
        TimerKey {
            index,
            generation: self.entries[index as usize].generation,
        }
    }

    /// Disarm a timer and hand its item back; `None` if the key is stale (the timer
    /// fired or was already cancelled). O(1).
    pub fn cancel(&mut self, key: TimerKey) -> Option<T> {
        let e = self.entries.get(key.index as usize)?;
        if e.generation != key.generation || e.slot == FREE {
            return None;
        }
        self.unlink(key.index);
        Some(self.release(key.index))
    }

    /// The deadline of an armed timer.
    #[must_use]
    pub fn deadline(&self, key: TimerKey) -> Option<u64> {
        self.live(key).map(|e| e.deadline)
    }

    /// The item of an armed timer.
    #[must_use]
    pub fn get(&self, key: TimerKey) -> Option<&T> {
        self.live(key).and_then(|e| e.value.as_ref())
    }

    /// The item of an armed timer, to change it in place (its deadline stays).
    pub fn get_mut(&mut self, key: TimerKey) -> Option<&mut T> {
        self.entries
            .get_mut(key.index as usize)
            .filter(|e| e.generation == key.generation && e.slot != FREE)
            .and_then(|e| e.value.as_mut())
    }

    /// The key of the armed timer in slab entry `index` (a caller that keeps armed
    /// timers' indices, 4 bytes, instead of their keys, 8).
    #[must_use]
    pub fn key_at(&self, index: u32) -> Option<TimerKey> {
        self.entries
            .get(index as usize)
            .filter(|e| e.slot != FREE)
            .map(|e| TimerKey {
                index,
                generation: e.generation,
            })
    }

    /// The item of the armed timer in slab entry `index` (see
    /// [`key_at`](Self::key_at)).
    #[must_use]
    pub fn get_at(&self, index: u32) -> Option<&T> {
        self.entries
            .get(index as usize)
            .filter(|e| e.slot != FREE)
            .and_then(|e| e.value.as_ref())
    }

    fn live(&self, key: TimerKey) -> Option<&Entry<T>> {
        self.entries
            .get(key.index as usize)
            .filter(|e| e.generation == key.generation && e.slot != FREE)
    }

    /// A lower bound of the earliest armed deadline, for how long the caller may sleep
    /// before the next [`advance`](Self::advance): exact when the earliest timers are
    /// within the current 64 ticks, else the start of the slot that cascades next (one
    /// early wake-up, after which the bound is exact). `None` when empty. May be in the
    /// past: then advance now.
    #[must_use]
    pub fn next_deadline(&self) -> Option<u64> {
        let (level, slot, start) = self.next_expiration()?;
        let bound = start.saturating_mul(self.tick_ns);
        Some(if level == 0 && self.l0_min[slot] != u64::MAX {
            self.l0_min[slot]
        } else {
            bound
        })
    }

    /// Expire every timer whose deadline is `<= now_ns`, appending the items to `out`
    /// (in tick order; in no particular order within a tick). Never fires a timer
    /// early; a timer fires on the first call whose `now_ns` reaches its deadline. A
    /// `now_ns` earlier than a previous one fires nothing.
    pub fn advance(&mut self, now_ns: u64, out: &mut Vec<T>) {
        let mut fired = self.expire(now_ns);
        out.extend(fired.drain(..).map(|i| self.release(i)));
        self.fired = fired;
    }

    /// Like [`advance`](Self::advance), but each fired timer stays armed under its
    /// key: `rearm` gets its item (in the same order) to update in place and returns
    /// its next deadline. A periodic timer costs no free and insert per period, and
    /// its key never changes, so a caller may keep it.
    pub fn advance_rearm(&mut self, now_ns: u64, mut rearm: impl FnMut(&mut T) -> u64) {
        let mut fired = self.expire(now_ns);
        for &i in &fired {
            let e = &mut self.entries[i as usize];
            let Some(value) = e.value.as_mut() else {
                unreachable!("timing wheel: armed entry without an item");
            };
            e.deadline = rearm(value);
            self.place(i);
        }
        fired.clear();
        self.fired = fired;
    }

    /// Unlink every timer due by `now_ns`, returning their entries (still allocated),
    /// in firing order.
    fn expire(&mut self, now_ns: u64) -> Vec<u32> {
        let mut fired = std::mem::take(&mut self.fired);
        let target = now_ns / self.tick_ns;
        while let Some((level, slot, start)) = self.next_expiration() {
            if start > target {
                break;
            }
            self.elapsed = self.elapsed.max(start);
            if level > 0 {
                self.cascade(level, slot);
            } else if start < target {
                self.fire_all(slot, &mut fired);
            } else {
                self.fire_due(slot, now_ns, &mut fired);
                break;
            }
        }
        self.elapsed = self.elapsed.max(target);
        fired
    }

    /// Move an armed timer to `deadline_ns`, keeping its key; `false` if the key is
    /// stale. O(1).
    pub fn reschedule(&mut self, key: TimerKey, deadline_ns: u64) -> bool {
        if self.live(key).is_none() {
            return false;
        }
        self.unlink(key.index);
        self.entries[key.index as usize].deadline = deadline_ns;
        self.place(key.index);
        true
    }

    /// Disarm every timer, dropping the items (keys become stale; the slab is kept).
    pub fn clear(&mut self) {
        for level in 0..LEVELS {
            for slot in 0..SLOTS {
                let mut i = std::mem::replace(&mut self.heads[level * SLOTS + slot], NIL);
                while i != NIL {
                    let next = self.entries[i as usize].next;
                    drop(self.release(i));
                    i = next;
                }
            }
        }
        self.occupied = [0; LEVELS];
        self.l0_min = [u64::MAX; SLOTS];
    }

    /// The earliest busy slot: (level, slot, first tick it covers). Lower levels always
    /// come first: a level-0 timer is in the current 64-tick block, a level-`l` timer
    /// beyond the current `64^l`-tick block.
    fn next_expiration(&self) -> Option<(usize, usize, u64)> {
        (0..LEVELS).find_map(|level| {
            let occ = self.occupied[level];
            if occ == 0 {
                return None;
            }
            let shift = SLOT_BITS * level as u32;
            let now_slot = ((self.elapsed >> shift) & 63) as u32;
            let slot = (now_slot + occ.rotate_right(now_slot).trailing_zeros()) % 64;
            debug_assert!(slot >= now_slot, "timer behind the wheel");
            let level_mask = 1u64
                .checked_shl(shift + SLOT_BITS)
                .map_or(u64::MAX, |range| range - 1);
            let start = (self.elapsed & !level_mask) + (u64::from(slot) << shift);
            Some((level, slot as usize, start.max(self.elapsed)))
        })
    }

    /// Link entry `index` into the slot its deadline belongs to, relative to `elapsed`.
    fn place(&mut self, index: u32) {
        let deadline = self.entries[index as usize].deadline;
        let tick = (deadline / self.tick_ns).max(self.elapsed);
        let significant = 63 - ((tick ^ self.elapsed) | 63).leading_zeros();
        let level = (significant / SLOT_BITS) as usize;
        let slot = ((tick >> (SLOT_BITS * level as u32)) & 63) as usize;
        let pos = level * SLOTS + slot;
        let head = self.heads[pos];
        if head != NIL {
            self.entries[head as usize].prev = index;
        }
        let e = &mut self.entries[index as usize];
        e.prev = NIL;
        e.next = head;
        // `pos` < 11 * 64 = 704, always a valid u16 below FREE.
        e.slot = pos as u16;
        self.heads[pos] = index;
        self.occupied[level] |= 1 << slot;
        if level == 0 {
            self.l0_min[slot] = self.l0_min[slot].min(deadline);
        }
    }

    /// Remove entry `index` from its slot's list (it stays allocated).
    fn unlink(&mut self, index: u32) {
        let (prev, next, pos) = {
            let e = &self.entries[index as usize];
            (e.prev, e.next, e.slot as usize)
        };
        if prev == NIL {
            self.heads[pos] = next;
        } else {
            self.entries[prev as usize].next = next;
        }
        if next != NIL {
            self.entries[next as usize].prev = prev;
        }
        if self.heads[pos] == NIL {
            let (level, slot) = (pos / SLOTS, pos % SLOTS);
            self.occupied[level] &= !(1 << slot);
            if level == 0 {
                self.l0_min[slot] = u64::MAX;
            }
        }
    }

    /// Free an unlinked entry: take its item, bump its generation, push it on the
    /// free list.
    fn release(&mut self, index: u32) -> T {
        let e = &mut self.entries[index as usize];
        e.generation = e.generation.wrapping_add(1);
        e.slot = FREE;
        e.next = self.free_head;
        self.free_head = index;
        self.len -= 1;
        match e.value.take() {
            Some(v) => v,
            // Every linked entry holds a value: `insert` stores it before linking and
            // only `release` takes it, after unlinking.
            None => unreachable!("timing wheel: armed entry without an item"),
        }
    }

    /// Detach a slot's whole list, returning its head.
    fn take_slot(&mut self, level: usize, slot: usize) -> u32 {
        self.occupied[level] &= !(1 << slot);
        if level == 0 {
            self.l0_min[slot] = u64::MAX;
        }
        std::mem::replace(&mut self.heads[level * SLOTS + slot], NIL)
    }

    fn cascade(&mut self, level: usize, slot: usize) {
        let mut i = self.take_slot(level, slot);
        while i != NIL {
            let next = self.entries[i as usize].next;
            self.place(i);
            i = next;
        }
    }

    fn fire_all(&mut self, slot: usize, fired: &mut Vec<u32>) {
        let mut i = self.take_slot(0, slot);
        while i != NIL {
            fired.push(i);
            i = self.entries[i as usize].next;
        }
    }

    /// Fire the timers of the current tick's slot that are due by `now_ns`, keeping
    /// the rest (due later within this tick).
    fn fire_due(&mut self, slot: usize, now_ns: u64, fired: &mut Vec<u32>) {
        if self.l0_min[slot] > now_ns {
            return;
        }
        let mut min = u64::MAX;
        let mut i = self.heads[slot];
        while i != NIL {
            let (next, deadline) = {
                let e = &self.entries[i as usize];
                (e.next, e.deadline)
            };
            if deadline <= now_ns {
                self.unlink(i);
                fired.push(i);
            } else {
                min = min.min(deadline);
            }
            i = next;
        }
        self.l0_min[slot] = min;
    }
}
