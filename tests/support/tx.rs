//! The one way tests and benches write a [`Transaction`]:
//!
//! ```ignore
//! let t = tx("t1").card("c1").merchant("m1").at(T0).amount(5.0).label(true).build();
//! ```
//!
//! Unset fields take the defaults below (card `c1`, merchant `m1`, time [`T0`], amount 1.0, no
//! label and no optional attribute), so a test names only what it relies on. Setters of optional
//! fields take the value or an `Option` (`.mcc(5411)`, `.mcc(None)`, `.country(Some("FR"))`).
//!
//! This file depends on nothing but `vigil` (benches include it with `#[path]`).
#![allow(dead_code)]

use vigil::record::{Channel, Transaction};

/// The default event time: 2023-11-14T22:13:20Z.
pub const T0: i64 = 1_700_000_000_000;

/// A builder for the transaction with id `id`; see the module docs for the defaults.
pub fn tx(id: impl Into<String>) -> TxBuilder {
    TxBuilder(Transaction {
        transaction_id: id.into(),
        timestamp_ms: T0,
        card_id: "c1".into(),
        merchant_id: "m1".into(),
        amount: 1.0,
        label: None,
        label_time_ms: None,
        currency: None,
        mcc: None,
        country: None,
        channel: None,
        lat: None,
        lon: None,
    })
}

/// See [`tx`].
#[derive(Debug, Clone)]
#[must_use = "call .build() to get the transaction"]
pub struct TxBuilder(Transaction);

impl TxBuilder {
    pub fn card(mut self, id: impl Into<String>) -> Self {
        self.0.card_id = id.into();
        self
    }

    pub fn merchant(mut self, id: impl Into<String>) -> Self {
        self.0.merchant_id = id.into();
        self
    }

    /// Event time, epoch milliseconds.
    pub fn at(mut self, timestamp_ms: i64) -> Self {
        self.0.timestamp_ms = timestamp_ms;
        self
    }

    pub fn amount(mut self, amount: f64) -> Self {
        self.0.amount = amount;
        self
    }

    /// Ground truth: `true` for fraud.
    pub fn label(mut self, fraud: impl Into<Option<bool>>) -> Self {
        self.0.label = fraud.into();
        self
    }

    /// When the label became known, epoch milliseconds.
    pub fn label_time(mut self, known_at_ms: impl Into<Option<i64>>) -> Self {
        self.0.label_time_ms = known_at_ms.into();
        self
    }

    pub fn currency(mut self, currency: impl OptionalText) -> Self {
        self.0.currency = currency.into_option();
        self
    }

    pub fn mcc(mut self, mcc: impl Into<Option<u16>>) -> Self {
        self.0.mcc = mcc.into();
        self
    }

    pub fn country(mut self, country: impl OptionalText) -> Self {
        self.0.country = country.into_option();
        self
    }

    pub fn channel(mut self, channel: impl Into<Option<Channel>>) -> Self {
        self.0.channel = channel.into();
        self
    }

    pub fn lat(mut self, lat: impl Into<Option<f64>>) -> Self {
        self.0.lat = lat.into();
        self
    }

    pub fn lon(mut self, lon: impl Into<Option<f64>>) -> Self {
        self.0.lon = lon.into();
        self
    }

    /// Both coordinates.
    pub fn location(self, lat: f64, lon: f64) -> Self {
        self.lat(lat).lon(lon)
    }

    pub fn build(self) -> Transaction {
        self.0
    }
}

/// A text field's value: `"FR"`, a `String`, or an `Option` of either.
pub trait OptionalText {
    fn into_option(self) -> Option<String>;
}

impl OptionalText for &str {
    fn into_option(self) -> Option<String> {
        Some(self.to_string())
    }
}

impl OptionalText for String {
    fn into_option(self) -> Option<String> {
        Some(self)
    }
}

impl OptionalText for Option<&str> {
    fn into_option(self) -> Option<String> {
        self.map(str::to_string)
    }
}

impl OptionalText for Option<String> {
    fn into_option(self) -> Option<String> {
        self
    }
}
