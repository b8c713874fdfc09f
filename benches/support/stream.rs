//! The synthetic transaction stream shared by the feature-engine bench (`benches/features.rs`)
//! and its instruction-count profile (`examples/features_profile.rs`). See the bench's doc
//! comment for what the stream models.

use std::collections::VecDeque;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp, LogNormal};
use vigil::record::{Channel, LabelEvent, Transaction};

// The tests' transaction builder (relative to this file, so the example that includes it too
// finds it).
#[path = "../../tests/support/tx.rs"]
mod tx;
use tx::tx;

pub const T0: i64 = 1_700_000_000_000;

pub enum Item {
    Tx(Transaction),
    Label(LabelEvent),
}

pub struct Stream {
    rng: ChaCha8Rng,
    merchants: usize,
    /// Cumulative per-card rates (events per span).
    pub cum: Vec<f64>,
    gap: Exp<f64>,
    amount: LogNormal<f64>,
    now: f64,
    seq: u64,
    label_delay_ms: i64,
    labels: VecDeque<(i64, u64)>,
}

impl Stream {
    pub fn new(cards: usize, span_ms: i64, seed: u64) -> Stream {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut total = 0.0;
        let cum = (0..cards)
            .map(|_| {
                total += 30f64.powf(rng.gen::<f64>());
                total
            })
            .collect();
        Stream {
            rng,
            merchants: (cards / 100).max(10),
            cum,
            gap: Exp::new(total / span_ms as f64).expect("positive rate"),
            amount: LogNormal::new(3.5, 1.0).expect("valid log-normal"),
            now: T0 as f64,
            seq: 0,
            label_delay_ms: span_ms * 3 / 10,
            labels: VecDeque::new(),
        }
    }

    pub fn next_tx(&mut self) -> Transaction {
        self.now += self.gap.sample(&mut self.rng);
        let ts = self.now as i64;
        let total = *self.cum.last().expect("at least one card");
        let u = self.rng.gen::<f64>() * total;
        let card = self.cum.partition_point(|c| *c < u).min(self.cum.len() - 1);
        let home = card.wrapping_mul(2_654_435_761);
        let merchant = if self.rng.gen_bool(0.8) {
            (home + self.rng.gen_range(0..5) * 7919) % self.merchants
        } else {
            self.rng.gen_range(0..self.merchants)
        };
        let channel = match self.rng.gen_range(0..20) {
            0..=9 => Channel::Pos,
            10..=17 => Channel::Online,
            18 => Channel::Atm,
            _ => Channel::Moto,
        };
        let abroad = self.rng.gen_bool(0.05);
        let country = ["FR", "DE", "ES", "IT", "NL"][if abroad {
            self.rng.gen_range(0..5)
        } else {
            home % 5
        }];
        let located = channel == Channel::Pos || channel == Channel::Atm;
        let (lat, lon) = (40.0 + (home % 10) as f64, (home % 20) as f64 - 5.0);
        self.seq += 1;
        // The setters are called in the order of the random draws (it fixes the stream).
        tx(format!("t{}", self.seq))
            .at(ts)
            .card(format!("card{card}"))
            .merchant(format!("m{merchant}"))
            .amount(self.amount.sample(&mut self.rng))
            .mcc(5411)
            .country(country)
            .channel(channel)
            .lat(located.then(|| lat + self.rng.gen_range(-0.1..0.1)))
            .lon(located.then(|| lon + self.rng.gen_range(-0.1..0.1)))
            .build()
    }

    /// Appends the next `n` transactions, with the labels due before each of them.
    pub fn fill(&mut self, n: usize, out: &mut Vec<Item>) {
        for _ in 0..n {
            let tx = self.next_tx();
            while let Some(&(known_at, seq)) = self.labels.front() {
                if known_at > tx.timestamp_ms {
                    break;
                }
                self.labels.pop_front();
                out.push(Item::Label(LabelEvent {
                    transaction_id: format!("t{seq}"),
                    fraud: true,
                    known_at_ms: known_at,
                }));
            }
            if self.rng.gen_bool(0.01) {
                self.labels
                    .push_back((tx.timestamp_ms + self.label_delay_ms, self.seq));
            }
            out.push(Item::Tx(tx));
        }
    }
}

impl Stream {
    /// Transactions in one span of the stream (the sum of the cards' rates).
    pub fn per_span(&self) -> f64 {
        self.cum.last().copied().unwrap_or(0.0)
    }
}
