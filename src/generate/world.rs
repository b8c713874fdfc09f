//! The static world the simulation runs in: cities, merchant kinds, merchants and card holders.
//!
//! Everything here is built once from the seed before the first day is simulated, and is sized by
//! the number of cards and merchants (which scale with the requested rows), never by the rows
//! themselves, so memory stays flat however long the history is.
//!
//! The world is deliberately clustered: merchants and card holders live around a fixed list of
//! real cities, so "nearby merchants" and "thousands of km away" have a real meaning for the
//! distance / speed features downstream.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::record::Channel;

/// A city merchants and card holders cluster around.
#[derive(Debug, Clone, Copy)]
pub(crate) struct City {
    pub lat: f64,
    pub lon: f64,
    /// ISO 3166 alpha-2 country.
    pub country: &'static str,
    /// ISO 4217 currency. Only currencies of roughly dollar magnitude are used so amounts stay
    /// comparable across the file without an exchange-rate model.
    pub currency: &'static str,
    /// UTC offset in whole hours (no DST: the daily rhythm is what matters, not the exact clock).
    pub tz_hours: i32,
    /// Relative share of merchants and card holders.
    pub weight: f64,
}

const fn city(
    lat: f64,
    lon: f64,
    country: &'static str,
    currency: &'static str,
    tz_hours: i32,
    weight: f64,
) -> City {
    City {
        lat,
        lon,
        country,
        currency,
        tz_hours,
        weight,
    }
}

/// The world map. Weighted towards Europe and North America like a typical issuer portfolio,
/// with a few far-away cities so legitimate travel and impossible travel both exist.
pub(crate) const CITIES: [City; 26] = [
    city(51.507, -0.128, "GB", "GBP", 0, 9.0),    // London
    city(53.480, -2.242, "GB", "GBP", 0, 3.0),    // Manchester
    city(53.350, -6.260, "IE", "EUR", 0, 2.0),    // Dublin
    city(48.857, 2.352, "FR", "EUR", 1, 8.0),     // Paris
    city(45.764, 4.836, "FR", "EUR", 1, 2.5),     // Lyon
    city(52.520, 13.405, "DE", "EUR", 1, 6.0),    // Berlin
    city(48.137, 11.576, "DE", "EUR", 1, 3.5),    // Munich
    city(40.417, -3.704, "ES", "EUR", 1, 5.0),    // Madrid
    city(41.385, 2.173, "ES", "EUR", 1, 3.5),     // Barcelona
    city(45.464, 9.190, "IT", "EUR", 1, 4.0),     // Milan
    city(41.903, 12.496, "IT", "EUR", 1, 3.5),    // Rome
    city(52.368, 4.904, "NL", "EUR", 1, 3.0),     // Amsterdam
    city(50.850, 4.352, "BE", "EUR", 1, 2.0),     // Brussels
    city(38.722, -9.139, "PT", "EUR", 0, 2.0),    // Lisbon
    city(47.377, 8.541, "CH", "CHF", 1, 2.0),     // Zurich
    city(40.713, -74.006, "US", "USD", -5, 8.0),  // New York
    city(34.052, -118.244, "US", "USD", -8, 5.0), // Los Angeles
    city(41.878, -87.630, "US", "USD", -6, 4.0),  // Chicago
    city(29.760, -95.370, "US", "USD", -6, 3.0),  // Houston
    city(25.762, -80.192, "US", "USD", -5, 2.5),  // Miami
    city(47.606, -122.332, "US", "USD", -8, 2.0), // Seattle
    city(43.653, -79.383, "CA", "CAD", -5, 3.0),  // Toronto
    city(49.283, -123.121, "CA", "CAD", -8, 1.5), // Vancouver
    city(-33.869, 151.209, "AU", "AUD", 10, 2.5), // Sydney
    city(-36.849, 174.763, "NZ", "NZD", 12, 1.0), // Auckland
    city(1.352, 103.820, "SG", "SGD", 8, 2.0),    // Singapore
];

/// What a merchant sells, which fixes its MCC, typical ticket size and channel mix.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Kind {
    /// ISO 18245 merchant category code.
    pub mcc: u16,
    /// Relative share of merchants of this kind.
    pub weight: f64,
    /// Multiplier on the card holder's own spending level.
    pub amount_scale: f64,
    /// Probability of a card-not-present (online) transaction; the rest is card present,
    /// except for `moto` below.
    pub online: f32,
    /// Probability of a mail / telephone order.
    pub moto: f32,
    /// Online-only merchants have no shop: card holders anywhere use them.
    pub online_only: bool,
    pub atm: bool,
    /// Fixed price points (digital media) instead of a continuous amount.
    pub price_points: bool,
}

const fn kind(mcc: u16, weight: f64, amount_scale: f64, online: f32, moto: f32) -> Kind {
    Kind {
        mcc,
        weight,
        amount_scale,
        online,
        moto,
        online_only: false,
        atm: false,
        price_points: false,
    }
}

const fn online_kind(mcc: u16, weight: f64, amount_scale: f64, moto: f32) -> Kind {
    Kind {
        online_only: true,
        ..kind(mcc, weight, amount_scale, 1.0 - moto, moto)
    }
}

pub(crate) const KIND_ATM: usize = 10;

pub(crate) const KINDS: [Kind; 18] = [
    kind(5411, 20.0, 1.0, 0.03, 0.0), // grocery
    kind(5812, 14.0, 1.1, 0.05, 0.0), // restaurants
    kind(5814, 10.0, 0.35, 0.0, 0.0), // fast food
    kind(5541, 8.0, 1.3, 0.0, 0.0),   // fuel
    kind(5912, 6.0, 0.7, 0.05, 0.0),  // pharmacy
    kind(5311, 6.0, 2.0, 0.2, 0.0),   // department store
    kind(5732, 4.0, 4.0, 0.4, 0.0),   // electronics
    kind(5944, 1.5, 6.0, 0.1, 0.0),   // jewellery
    kind(5999, 8.0, 1.2, 0.15, 0.0),  // misc retail
    kind(4111, 5.0, 0.12, 0.0, 0.0),  // transit
    Kind {
        atm: true,
        ..kind(6011, 6.0, 2.5, 0.0, 0.0)
    }, // ATM (KIND_ATM)
    kind(7011, 2.0, 5.0, 0.2, 0.2),   // hotels
    Kind {
        price_points: true,
        ..online_kind(5815, 4.0, 0.2, 0.0)
    }, // digital media
    online_kind(5967, 2.0, 0.8, 0.3), // subscriptions / direct marketing
    online_kind(5969, 8.0, 1.5, 0.0), // general e-commerce
    online_kind(4829, 1.0, 5.0, 0.0), // money transfer
    online_kind(4722, 1.5, 8.0, 0.2), // travel agencies
    online_kind(7995, 1.0, 2.0, 0.0), // gambling
];

/// Online kinds fraudsters cash out at: big tickets, quickly resold or moved.
pub(crate) fn is_cash_out_kind(k: usize) -> bool {
    matches!(KINDS[k].mcc, 5969 | 4829 | 4722 | 7995)
}

/// Card-present kinds a thief with a physical card goes for.
pub(crate) fn is_resale_kind(k: usize) -> bool {
    matches!(KINDS[k].mcc, 5732 | 5944 | 5311 | 6011)
}

#[derive(Debug, Clone)]
pub(crate) struct Merchant {
    pub city: u16,
    pub kind: u8,
    /// Terminal location; card-present rows carry it.
    pub lat: f64,
    pub lon: f64,
    /// `lat,lon` already formatted, since every card-present row writes it.
    pub loc_text: Box<str>,
    /// Set while a compromise episode runs at this merchant.
    pub compromised: bool,
    /// Number of cards that have this merchant in their pool and expected visits per day from
    /// them: used to predict how many cards a compromise will expose.
    pub pool_cards: u32,
    pub daily_visits: f32,
}

impl Merchant {
    /// Draws the channel of one transaction from the kind's mix.
    pub fn channel(&self, rng: &mut ChaCha8Rng) -> Channel {
        let k = &KINDS[self.kind as usize];
        if k.atm {
            return Channel::Atm;
        }
        let u: f32 = rng.gen();
        if u < k.moto {
            Channel::Moto
        } else if u < k.moto + k.online {
            Channel::Online
        } else {
            Channel::Pos
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Card {
    pub city: u16,
    /// Log-normal spending level: amounts are `exp(mu + sigma * z)` times the merchant kind scale.
    pub mu: f32,
    pub sigma: f32,
    /// Mean transactions per day.
    pub rate: f32,
    /// Share of transactions at online merchants of the pool.
    pub online_share: f32,
    /// Daily rhythm: local hour of activity ~ N(center, spread), wrapped to the day.
    pub hour_center: f32,
    pub hour_spread: f32,
    /// This card's merchant pool is `pools[pool_start..pool_start + n_local + n_online]`, nearby
    /// shops first (most preferred first), then online merchants.
    pub pool_start: u32,
    pub n_local: u8,
    pub n_online: u8,
    /// A legitimate trip: while `day < trip_until`, shopping happens in `trip_city`.
    pub trip_city: u16,
    pub trip_until: u32,
}

impl Card {
    /// Typical (median) ticket at a kind with scale 1.
    pub fn typical_amount(&self) -> f64 {
        f64::from(self.mu).exp()
    }
}

/// Sizes of the world.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WorldSize {
    pub cards: usize,
    pub merchants: usize,
    pub mean_rate: f64,
}

/// Smallest merchant count that gives every city a few shops plus some online merchants.
pub(crate) const MIN_MERCHANTS: u64 = (CITIES.len() * 3 + 5) as u64;

/// The built world.
///
/// Invariants established by [`World::build`] (given at least [`MIN_MERCHANTS`] merchants) and
/// relied on by the simulation when it indexes random elements: every city has at least three
/// card-present merchants, there are at least five online merchants (so `testing_targets` is not
/// empty), and every card's pool has at least one nearby shop and two online merchants.
pub(crate) struct World {
    pub merchants: Vec<Merchant>,
    pub cards: Vec<Card>,
    /// Flattened merchant pools of all cards.
    pub pools: Vec<u32>,
    /// Card-present merchants per city.
    pub local_by_city: Vec<Vec<u32>>,
    pub online: Vec<u32>,
    /// Online merchants of cash-out kinds.
    pub cash_out: Vec<u32>,
    /// A handful of weakly protected online merchants card testers converge on, which is what
    /// gives them a visible merchant-level fraud rate.
    pub testing_targets: Vec<u32>,
    pub cards_by_city: Vec<Vec<u32>>,
    city_cdf: Vec<f64>,
}

/// Picks an index with probability proportional to the weights, from a cumulative table.
pub(crate) fn pick_cdf(cdf: &[f64], rng: &mut ChaCha8Rng) -> usize {
    let total = cdf.last().copied().unwrap_or(0.0);
    let u = rng.gen::<f64>() * total;
    cdf.partition_point(|&c| c <= u)
        .min(cdf.len().saturating_sub(1))
}

fn cdf_of(weights: impl Iterator<Item = f64>) -> Vec<f64> {
    weights
        .scan(0.0, |acc, w| {
            *acc += w;
            Some(*acc)
        })
        .collect()
}

/// Index into a preference-ordered list of `n`: `floor(n * u^2)` favours the first entries
/// (a card holder's regular shops) while still visiting the others.
pub(crate) fn pick_preferred(n: usize, rng: &mut ChaCha8Rng) -> usize {
    let u: f64 = rng.gen();
    ((n as f64) * u * u).min(n as f64 - 1.0) as usize
}

/// Probability that [`pick_preferred`] returns `i`.
fn preferred_prob(i: usize, n: usize) -> f64 {
    let n = n as f64;
    ((i as f64 + 1.0) / n).sqrt() - (i as f64 / n).sqrt()
}

/// Great-circle distance in km.
pub(crate) fn haversine_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * 6371.0 * a.sqrt().min(1.0).asin()
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    StandardNormal.sample(rng)
}

/// A point scattered around a city (sd about 9 km), rounded to the 4 decimals written out so
/// internal distances match what readers of the file see.
fn around(c: &City, rng: &mut ChaCha8Rng) -> (f64, f64) {
    let round4 = |v: f64| (v * 1e4).round() / 1e4;
    let lat = round4((c.lat + 0.08 * normal(rng)).clamp(-89.9, 89.9));
    let lon = round4(c.lon + 0.08 * normal(rng) / c.lat.to_radians().cos().max(0.2));
    (lat, lon)
}

impl World {
    pub fn build(size: WorldSize, rng: &mut ChaCha8Rng) -> World {
        let city_cdf = cdf_of(CITIES.iter().map(|c| c.weight));
        let local_cdf = cdf_of(
            KINDS
                .iter()
                .map(|k| if k.online_only { 0.0 } else { k.weight }),
        );
        let kind_cdf = cdf_of(KINDS.iter().map(|k| k.weight));
        let online_cdf = cdf_of(
            KINDS
                .iter()
                .map(|k| if k.online_only { k.weight } else { 0.0 }),
        );

        let mut merchants = Vec::with_capacity(size.merchants);
        for i in 0..size.merchants {
            // The first merchants seed every city with shops and the world with online
            // merchants, so even a tiny world has somewhere to shop everywhere.
            let (city, kind) = if i < 3 * CITIES.len() {
                (i % CITIES.len(), pick_cdf(&local_cdf, rng))
            } else if i < 3 * CITIES.len() + 5 {
                (pick_cdf(&city_cdf, rng), pick_cdf(&online_cdf, rng))
            } else {
                (pick_cdf(&city_cdf, rng), pick_cdf(&kind_cdf, rng))
            };
            let (lat, lon) = around(&CITIES[city], rng);
            merchants.push(Merchant {
                city: city as u16,
                kind: kind as u8,
                lat,
                lon,
                loc_text: format!("{lat:.4},{lon:.4}").into_boxed_str(),
                compromised: false,
                pool_cards: 0,
                daily_visits: 0.0,
            });
        }

        let mut local_by_city = vec![Vec::new(); CITIES.len()];
        let mut online = Vec::new();
        for (i, m) in merchants.iter().enumerate() {
            if KINDS[m.kind as usize].online_only {
                online.push(i as u32);
            } else {
                local_by_city[m.city as usize].push(i as u32);
            }
        }
        let cash_out: Vec<u32> = online
            .iter()
            .copied()
            .filter(|&m| is_cash_out_kind(merchants[m as usize].kind as usize))
            .collect();
        let mut testing_targets: Vec<u32> = online
            .iter()
            .copied()
            .filter(|&m| {
                matches!(
                    KINDS[merchants[m as usize].kind as usize].mcc,
                    5815 | 5967 | 5969
                )
            })
            .take(4)
            .collect();
        if testing_targets.is_empty() {
            testing_targets = online.iter().copied().take(4).collect();
        }
        // Online merchant popularity is very skewed: a few giants, a long tail.
        let online_cdf_m = cdf_of((0..online.len()).map(|i| 1.0 / (i as f64 + 1.0)));

        let mut cards = Vec::with_capacity(size.cards);
        let mut pools = Vec::with_capacity(size.cards * 16);
        let mut cards_by_city = vec![Vec::new(); CITIES.len()];
        let mut candidates: Vec<(f64, u32)> = Vec::with_capacity(48);
        for ci in 0..size.cards {
            let city = pick_cdf(&city_cdf, rng);
            let (lat, lon) = around(&CITIES[city], rng);
            let night_owl = rng.gen::<f64>() < 0.12;
            let (hour_center, hour_spread) = if night_owl {
                (rng.gen_range(19.0..23.5), rng.gen_range(2.0..4.0))
            } else {
                (rng.gen_range(10.5..18.5), rng.gen_range(2.0..4.5))
            };
            // Transaction frequency is log-normal around the configured mean
            // (E[exp(0.6 z)] = exp(0.18), hence the correction).
            let rate = (size.mean_rate * (0.6 * normal(rng) - 0.18).exp()).clamp(0.02, 12.0);

            // Pool: the nearest of a random sample of the city's shops, nearest first.
            let shops = &local_by_city[city];
            candidates.clear();
            let dist = |m: u32| {
                let mm = &merchants[m as usize];
                (haversine_km(lat, lon, mm.lat, mm.lon), m)
            };
            if shops.len() <= 40 {
                candidates.extend(shops.iter().map(|&m| dist(m)));
            } else {
                for _ in 0..40 {
                    candidates.push(dist(shops[rng.gen_range(0..shops.len())]));
                }
            }
            candidates.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            candidates.dedup_by_key(|c| c.1);
            let n_local = rng.gen_range(6..=16).min(candidates.len());
            let pool_start = pools.len() as u32;
            pools.extend(candidates[..n_local].iter().map(|c| c.1));
            let n_online = rng.gen_range(2..=6).min(online.len());
            for _ in 0..n_online {
                pools.push(online[pick_cdf(&online_cdf_m, rng)]);
            }
            let online_share = rng.gen_range(0.05..0.35);
            let mu = (3.4 + 0.45 * normal(rng)) as f32;
            let sigma = rng.gen_range(0.5..0.9);
            for i in 0..n_local {
                let m = &mut merchants[pools[pool_start as usize + i] as usize];
                m.pool_cards += 1;
                m.daily_visits += (rate * (1.0 - online_share) * preferred_prob(i, n_local)) as f32;
            }
            cards_by_city[city].push(ci as u32);
            cards.push(Card {
                city: city as u16,
                mu,
                sigma,
                rate: rate as f32,
                online_share: online_share as f32,
                hour_center,
                hour_spread,
                pool_start,
                n_local: n_local as u8,
                n_online: n_online as u8,
                trip_city: city as u16,
                trip_until: 0,
            });
        }
        World {
            merchants,
            cards,
            pools,
            local_by_city,
            online,
            cash_out,
            testing_targets,
            cards_by_city,
            city_cdf,
        }
    }

    pub fn random_city(&self, rng: &mut ChaCha8Rng) -> usize {
        pick_cdf(&self.city_cdf, rng)
    }

    pub fn local_pool(&self, card: &Card) -> &[u32] {
        let s = card.pool_start as usize;
        &self.pools[s..s + card.n_local as usize]
    }

    pub fn online_pool(&self, card: &Card) -> &[u32] {
        let s = card.pool_start as usize + card.n_local as usize;
        &self.pools[s..s + card.n_online as usize]
    }

    /// A city at least `min_km` from `from` (falls back to the farthest one).
    pub fn far_city(&self, from: usize, min_km: f64, rng: &mut ChaCha8Rng) -> usize {
        let c = &CITIES[from];
        for _ in 0..16 {
            let to = self.random_city(rng);
            if haversine_km(c.lat, c.lon, CITIES[to].lat, CITIES[to].lon) >= min_km {
                return to;
            }
        }
        (0..CITIES.len())
            .max_by(|&a, &b| {
                let da = haversine_km(c.lat, c.lon, CITIES[a].lat, CITIES[a].lon);
                let db = haversine_km(c.lat, c.lon, CITIES[b].lat, CITIES[b].lon);
                da.total_cmp(&db)
            })
            .unwrap_or(from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn pools_are_nearby_and_every_city_has_shops() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let w = World::build(
            WorldSize {
                cards: 300,
                merchants: 400,
                mean_rate: 0.6,
            },
            &mut rng,
        );
        assert!(w.local_by_city.iter().all(|v| v.len() >= 3));
        assert!(!w.online.is_empty() && !w.testing_targets.is_empty());
        for card in &w.cards {
            assert!(card.n_local >= 3);
            for &m in w.local_pool(card) {
                let m = &w.merchants[m as usize];
                assert_eq!(m.city, card.city, "pool shops are in the home city");
                assert!(!KINDS[m.kind as usize].online_only);
            }
            for &m in w.online_pool(card) {
                assert!(KINDS[w.merchants[m as usize].kind as usize].online_only);
            }
        }
    }

    #[test]
    fn preference_probabilities_sum_to_one() {
        let s: f64 = (0..10).map(|i| preferred_prob(i, 10)).sum();
        assert!((s - 1.0).abs() < 1e-12);
        assert!(preferred_prob(0, 10) > preferred_prob(9, 10));
    }

    #[test]
    fn haversine_london_new_york() {
        let d = haversine_km(51.507, -0.128, 40.713, -74.006);
        assert!((5500.0..5650.0).contains(&d), "{d}");
    }
}
