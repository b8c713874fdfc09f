//! What each entity table computes, resolved once from the spec: the distinct window lengths and
//! risk (length, delay) pairs it keeps running aggregates for, and for every output column the
//! [`Source`] of its value. The engine builds its tables from this; the window code reads it
//! for every event.

use super::spec::{Agg, Attr, DistinctOut, Entity, FeatureKind, FeatureSpec, PrevOut, TxFeature};
use super::table::Columns;

/// Where the value of one entity-bound output column comes from, resolved to the table's
/// running-aggregate indices.
#[derive(Debug, Clone, Copy)]
pub(super) enum Source {
    Win {
        w: usize,
        agg: Agg,
        incl: bool,
    },
    Distinct {
        w: usize,
        of: Attr,
        incl: bool,
        out: DistinctOut,
    },
    Prev(PrevOut),
    Risk {
        r: usize,
        count: bool,
    },
}

/// What a table computes: fixed at construction.
#[derive(Debug)]
pub(super) struct TableCfg {
    pub(super) entity: Entity,
    /// Distinct window lengths of this entity's `Win` and `Distinct` sources (one running
    /// aggregate each; distinct counts only use its start).
    pub(super) win_lens: Vec<i64>,
    /// Per window length: whether a feature reads its max (otherwise it is not maintained).
    pub(super) win_max: Vec<bool>,
    /// Distinct (length, delay) pairs of this entity's `Risk` sources.
    pub(super) risk_params: Vec<(i64, i64)>,
    /// (output column, source), in column order: what the spec declares.
    pub(super) sources: Vec<(usize, Source)>,
    /// The `Win` sources grouped by (window, include_current), so each group's statistics are
    /// computed once per event.
    pub(super) win_groups: Vec<WinGroup>,
    /// The other sources (distinct, previous, risk).
    pub(super) other_sources: Vec<(usize, Source)>,
    /// Whether any source reads the previous event / the previous located event.
    pub(super) needs_prev: bool,
    pub(super) needs_prev_located: bool,
}

/// Window aggregates of one (window, include_current) pair and the columns they fill.
#[derive(Debug)]
pub(super) struct WinGroup {
    pub(super) w: usize,
    pub(super) incl: bool,
    pub(super) need_mean: bool,
    pub(super) need_std: bool,
    pub(super) outs: Vec<(usize, Agg)>,
}

impl TableCfg {
    /// The per-event columns this table's features read (plus the transaction tag where
    /// duplicates or labels look for it).
    pub(super) fn columns(&self, dedup: bool) -> Columns {
        let mut c = Columns {
            tag: dedup,
            ..Columns::default()
        };
        if !self.risk_params.is_empty() {
            c.known_at = true;
            c.bits = true;
            c.tag = true;
        }
        for &(_, source) in &self.sources {
            match source {
                Source::Distinct { of: Attr::Mcc, .. } => c.bits = true,
                Source::Distinct { of, .. } => c.attrs[of.index()] = true,
                Source::Prev(PrevOut::KmhSince) => c.loc = true,
                Source::Prev(PrevOut::CountryChanged) => c.attrs[Attr::Country.index()] = true,
                Source::Prev(PrevOut::MerchantChanged) => c.attrs[Attr::Merchant.index()] = true,
                _ => {}
            }
        }
        c
    }

    fn finish(&mut self) {
        self.win_max = vec![false; self.win_lens.len()];
        for &(col, source) in &self.sources {
            match source {
                Source::Win { w, agg, incl } => {
                    if agg == Agg::Max {
                        self.win_max[w] = true;
                    }
                    let g = match self
                        .win_groups
                        .iter()
                        .position(|g| g.w == w && g.incl == incl)
                    {
                        Some(g) => g,
                        None => {
                            self.win_groups.push(WinGroup {
                                w,
                                incl,
                                need_mean: false,
                                need_std: false,
                                outs: Vec::new(),
                            });
                            self.win_groups.len() - 1
                        }
                    };
                    let g = &mut self.win_groups[g];
                    g.need_mean |= matches!(agg, Agg::Mean | Agg::Std | Agg::AmountToMean);
                    g.need_std |= agg == Agg::Std;
                    g.outs.push((col, agg));
                }
                Source::Prev(out) => {
                    self.needs_prev = true;
                    self.needs_prev_located |= out == PrevOut::KmhSince;
                    self.other_sources.push((col, source));
                }
                Source::Distinct { .. } | Source::Risk { .. } => {
                    self.other_sources.push((col, source))
                }
            }
        }
    }
}

/// What each entity table of `spec` computes (one per entity kind the spec reads, in order of
/// first use), and the per-transaction features: both as (output column, feature) in the
/// spec's column order.
pub(super) fn resolve(spec: &FeatureSpec) -> (Vec<TableCfg>, Vec<(usize, TxFeature)>) {
    let mut cfgs: Vec<TableCfg> = Vec::new();
    let mut tx_features = Vec::new();
    for (col, f) in spec.features().iter().enumerate() {
        let Some(entity) = f.entity() else {
            if let FeatureKind::Transaction(t) = *f {
                tx_features.push((col, t));
            }
            continue;
        };
        let ti = match cfgs.iter().position(|t| t.entity == entity) {
            Some(i) => i,
            None => {
                cfgs.push(TableCfg {
                    entity,
                    win_lens: Vec::new(),
                    win_max: Vec::new(),
                    risk_params: Vec::new(),
                    sources: Vec::new(),
                    win_groups: Vec::new(),
                    other_sources: Vec::new(),
                    needs_prev: false,
                    needs_prev_located: false,
                });
                cfgs.len() - 1
            }
        };
        let cfg = &mut cfgs[ti];
        let source = match *f {
            FeatureKind::Window {
                length_ms,
                include_current,
                agg,
                ..
            } => Source::Win {
                w: index_of(&mut cfg.win_lens, length_ms),
                agg,
                incl: include_current,
            },
            FeatureKind::Distinct {
                of,
                length_ms,
                include_current,
                out,
                ..
            } => Source::Distinct {
                w: index_of(&mut cfg.win_lens, length_ms),
                of,
                incl: include_current,
                out,
            },
            FeatureKind::Previous { out, .. } => Source::Prev(out),
            FeatureKind::Risk {
                length_ms,
                delay_ms,
                count,
                ..
            } => Source::Risk {
                r: index_of(&mut cfg.risk_params, (length_ms, delay_ms)),
                count,
            },
            // Handled above: transaction features have no entity.
            FeatureKind::Transaction(_) => continue,
        };
        cfg.sources.push((col, source));
    }
    for cfg in &mut cfgs {
        cfg.finish();
    }
    (cfgs, tx_features)
}

fn index_of<T: PartialEq + Copy>(v: &mut Vec<T>, x: T) -> usize {
    match v.iter().position(|y| *y == x) {
        Some(i) => i,
        None => {
            v.push(x);
            v.len() - 1
        }
    }
}
