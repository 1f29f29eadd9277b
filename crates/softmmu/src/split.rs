//! Changing part of a VMA: split, then merge with the neighbours when the
//! result matches them.
//!
//! Kernel counterpart: `mm/vma.c` (`__split_vma`, `vma_modify`,
//! `vma_merge_existing_range`, `vma_merge_new_range`, `commit_merge`).
//! Splits and merges that move a boundary inside a PMD-sized block call
//! `vma_adjust_trans_huge`, which may notify (see `huge_memory`).

use mmun_core::HeldMmLock;

use crate::address_space::Ctx;
use crate::error::{Errno, SysResult};
use crate::huge_memory::vma_adjust_trans_huge;
use crate::vma::{Vma, can_merge};

/// `__split_vma`: cuts the VMA containing `addr` at `addr`.
pub(crate) fn split_vma<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, addr: u64) {
    let Some(vma) = ctx.st.vmas.lookup(addr).cloned() else {
        return;
    };
    if vma.start == addr {
        return;
    }
    vma_adjust_trans_huge(ctx, &vma, vma.start, addr, None);
    ctx.st.vmas.split_at(addr);
}

/// `vma_modify`: applies `change` to `[start, end)`, which lies inside the
/// VMA `middle`, merging with a neighbour where the result allows it and
/// splitting `middle` otherwise. Returns the VMA that now covers the range;
/// `ENOMEM` if a split would take the address space past
/// `vm.max_map_count` (`split_vma` checks `map_count >= max` before each
/// split, so a first split may succeed and the second fail, as on Linux).
pub(crate) fn vma_modify<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    middle: &Vma,
    start: u64,
    end: u64,
    change: impl Fn(&Vma) -> Vma,
) -> SysResult<Vma> {
    if let Some(merged) = merge_existing(ctx, middle, start, end, &change) {
        return Ok(merged);
    }
    let at_limit = |ctx: &Ctx<'_, L>| ctx.st.vmas.len() >= ctx.st.max_map_count;
    if middle.start < start {
        if at_limit(ctx) {
            return Err(Errno::NoMem);
        }
        split_vma(ctx, start);
    }
    if middle.end > end {
        if at_limit(ctx) {
            return Err(Errno::NoMem);
        }
        split_vma(ctx, end);
    }
    let target = ctx
        .st
        .vmas
        .get_mut(start)
        .expect("split leaves a VMA at start");
    *target = change(target);
    Ok(target.clone())
}

/// `vma_merge_existing_range`: the modified range joins `prev` (if it
/// starts `middle`) and/or `next` (if it ends `middle`).
fn merge_existing<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    middle: &Vma,
    start: u64,
    end: u64,
    change: &impl Fn(&Vma) -> Vma,
) -> Option<Vma> {
    let mut candidate = change(middle);
    candidate.start = start;
    candidate.end = end;
    if let Some(file) = candidate.file.as_mut() {
        file.pgoff = middle.pgoff_of(start);
    }
    let prev = ctx.st.vmas.prev(start).filter(|p| p.end == start).cloned();
    let next = ctx
        .st
        .vmas
        .next_from(end)
        .filter(|n| n.start == end)
        .cloned();
    let merge_left =
        start == middle.start && prev.as_ref().is_some_and(|p| can_merge(p, &candidate));
    let merge_right = end == middle.end && next.as_ref().is_some_and(|n| can_merge(&candidate, n));
    let merge_both = merge_left && merge_right && {
        let (p, n) = (prev.as_ref()?, next.as_ref()?);
        !matches!((p.anon_vma, n.anon_vma), (Some(a), Some(b)) if a != b)
    };
    if merge_both {
        let (p, n) = (prev?, next?);
        return Some(expand(
            ctx,
            &p,
            p.start,
            n.end,
            candidate.anon_vma.or(n.anon_vma),
            &[middle.start, n.start],
            None,
        ));
    }
    if merge_left {
        let p = prev?;
        let remove = if end == middle.end {
            vec![middle.start]
        } else {
            Vec::new()
        };
        let adjust = (end != middle.end).then_some(middle);
        if end != middle.end {
            // `middle` gives up its front before `prev` grows over it; the
            // THP check still sees `middle` as it was.
            shrink_front(ctx, middle, end);
        }
        return Some(expand(
            ctx,
            &p,
            p.start,
            end,
            candidate.anon_vma,
            &remove,
            adjust,
        ));
    }
    if merge_right && start == middle.start {
        let n = next?;
        let merged = expand(
            ctx,
            &n,
            start,
            n.end,
            candidate.anon_vma,
            &[middle.start, n.start],
            None,
        );
        return Some(merged);
    }
    if merge_right {
        // A suffix of `middle` joins `next`: `middle` ends at `start`
        // (commit_merge with `middle` as the target shrinking to
        // `[middle.start, start)` and `next` adjusted: the THP check at
        // `start` looks at `middle`, which holds the block; recorded).
        let n = next?;
        vma_adjust_trans_huge(ctx, middle, middle.start, start, Some(&n));
        ctx.st.vmas.get_mut(middle.start).expect("middle").end = start;
        let mut grown = ctx.st.vmas.remove(n.start).expect("next");
        if let Some(file) = grown.file.as_mut() {
            file.pgoff = candidate.file.as_ref().map_or(file.pgoff, |f| f.pgoff);
        }
        grown.start = start;
        grown.anon_vma = grown.anon_vma.or(candidate.anon_vma);
        ctx.st.vmas.insert(grown.clone());
        return Some(grown);
    }
    None
}

/// `commit_merge` of an expansion: `target` grows to `[start, end)`,
/// swallowing the VMAs starting at `remove`.
fn expand<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    target: &Vma,
    start: u64,
    end: u64,
    anon_vma: Option<crate::vma::AnonVmaId>,
    remove: &[u64],
    adjust_middle: Option<&Vma>,
) -> Vma {
    vma_adjust_trans_huge(ctx, target, start, end, adjust_middle);
    for &at in remove {
        if at != target.start {
            ctx.st.vmas.remove(at);
        }
    }
    let mut grown = ctx.st.vmas.remove(target.start).expect("target");
    if start < grown.start
        && let Some(file) = grown.file.as_mut()
    {
        file.pgoff -= (grown.start - start) >> crate::layout::PAGE_SHIFT;
    }
    grown.start = start;
    grown.end = end;
    grown.anon_vma = grown.anon_vma.or(anon_vma);
    ctx.st.vmas.insert(grown.clone());
    grown
}

fn shrink_front<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, middle: &Vma, new_start: u64) {
    let mut rest = ctx.st.vmas.remove(middle.start).expect("middle");
    if let Some(file) = rest.file.as_mut() {
        file.pgoff += (new_start - rest.start) >> crate::layout::PAGE_SHIFT;
    }
    rest.start = new_start;
    ctx.st.vmas.insert(rest);
}

/// `vma_merge_new_range` + `vma_expand`, or a plain insert: places a new
/// VMA, joining an adjacent compatible neighbour.
pub(crate) fn insert_or_merge<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, vma: Vma) -> Vma {
    let prev = ctx
        .st
        .vmas
        .prev(vma.start)
        .filter(|p| p.end == vma.start)
        .cloned();
    let next = ctx
        .st
        .vmas
        .next_from(vma.end)
        .filter(|n| n.start == vma.end)
        .cloned();
    let left = prev.as_ref().is_some_and(|p| can_merge(p, &vma));
    let right = next.as_ref().is_some_and(|n| can_merge(&vma, n));
    let both = left && right && {
        let (p, n) = (prev.as_ref().expect("left"), next.as_ref().expect("right"));
        !matches!((p.anon_vma, n.anon_vma), (Some(a), Some(b)) if a != b)
    };
    match (prev, next) {
        (Some(p), Some(n)) if both => expand(ctx, &p, p.start, n.end, n.anon_vma, &[n.start], None),
        (Some(p), _) if left => expand(ctx, &p, p.start, vma.end, None, &[], None),
        (_, Some(n)) if right => {
            let mut grown = vma.clone();
            grown.end = n.end;
            grown.anon_vma = n.anon_vma;
            grown.file = n.file.clone().map(|mut f| {
                f.pgoff -= (n.start - vma.start) >> crate::layout::PAGE_SHIFT;
                f
            });
            vma_adjust_trans_huge(ctx, &n, vma.start, n.end, None);
            ctx.st.vmas.remove(n.start);
            ctx.st.vmas.insert(grown.clone());
            grown
        }
        _ => {
            ctx.st.vmas.insert(vma.clone());
            vma
        }
    }
}
