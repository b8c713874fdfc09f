//! The history CSV: reading a file of labelled transactions into a [`History`]
//! ([`read_history`] and friends, errors naming the line, column and value) and writing one
//! ([`write_history_csv`]). Columns are [`CSV_COLUMNS`], the order `vigil generate` writes.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{format_timestamp, RawLabel, RawTimestamp, RawTransaction, RecordError, Transaction};

/// The column names of a history CSV, in the order `vigil generate` writes them.
pub const CSV_COLUMNS: [&str; 13] = [
    "transaction_id",
    "timestamp",
    "card_id",
    "merchant_id",
    "amount",
    "label",
    "label_time",
    "currency",
    "mcc",
    "country",
    "channel",
    "lat",
    "lon",
];

/// A row of a history file that could not be read, with its place.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}:{line}: column `{column}`, value `{value}`: {reason}", path.display())]
pub struct CsvRowError {
    pub path: PathBuf,
    /// 1-based line number in the file (the header is line 1).
    pub line: u64,
    pub column: String,
    pub value: String,
    pub reason: String,
}

/// Errors reading a history file.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    // The I/O error is part of the message rather than a `source`, so it is printed once.
    #[error("cannot read {}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}: header has no `{column}` column (required: transaction_id, timestamp, card_id, merchant_id, amount)", path.display())]
    MissingColumn { path: PathBuf, column: &'static str },
    #[error("{}: malformed CSV: {source}", path.display())]
    Csv { path: PathBuf, source: csv::Error },
    #[error(transparent)]
    Row(#[from] CsvRowError),
}

/// Options for reading a history file.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOptions {
    /// Count and report bad rows instead of stopping at the first one.
    pub skip_invalid: bool,
    /// `(received, max_skew)` in epoch ms: refuse rows more than `max_skew` after `received`,
    /// the scorer's future-timestamp rule ([`super::check_not_future`]) applied to history
    /// with the reading time as "received", so the trainer never learns from an event the
    /// scorer would refuse.
    pub future_rule: Option<(i64, i64)>,
}

/// A history file read into memory.
#[derive(Debug, Default)]
pub struct History {
    /// Valid rows, in file order.
    pub transactions: Vec<Transaction>,
    /// Rows refused (only with `skip_invalid`), in file order.
    pub skipped: Vec<CsvRowError>,
}

impl History {
    /// Sorts by event time; rows with equal timestamps keep their file order, so the replay order
    /// is fully determined by the file.
    pub fn sort_by_time(&mut self) {
        self.transactions.sort_by_key(|t| t.timestamp_ms);
    }
}

/// Column positions found in a header.
struct Columns {
    idx: [Option<usize>; 13],
}

impl Columns {
    fn from_header(path: &Path, header: &csv::StringRecord) -> Result<Columns, HistoryError> {
        let mut idx = [None; 13];
        for (i, name) in header.iter().enumerate() {
            let name = name.trim().trim_start_matches('\u{feff}');
            if let Some(c) = CSV_COLUMNS
                .iter()
                .position(|c| c.eq_ignore_ascii_case(name))
            {
                idx[c].get_or_insert(i);
            }
        }
        for (c, column) in CSV_COLUMNS.iter().enumerate().take(5) {
            if idx[c].is_none() {
                return Err(HistoryError::MissingColumn {
                    path: path.to_path_buf(),
                    column,
                });
            }
        }
        Ok(Columns { idx })
    }

    fn get<'r>(&self, rec: &'r csv::StringRecord, col: usize) -> Option<&'r str> {
        self.idx[col]
            .and_then(|i| rec.get(i))
            .map(str::trim)
            .filter(|s| !s.is_empty())
    }
}

fn parse_row(cols: &Columns, rec: &csv::StringRecord) -> Result<Transaction, (usize, RecordError)> {
    fn num<T: std::str::FromStr>(
        col: usize,
        field: &'static str,
        s: Option<&str>,
        what: &str,
    ) -> Result<Option<T>, (usize, RecordError)> {
        s.map(|s| {
            s.parse::<T>()
                .map_err(|_| (col, RecordError::new(field, format!("`{s}` is not {what}"))))
        })
        .transpose()
    }
    let raw = RawTransaction {
        transaction_id: cols.get(rec, 0).map(str::to_string),
        timestamp: cols.get(rec, 1).map(|s| RawTimestamp::Text(s.to_string())),
        card_id: cols.get(rec, 2).map(str::to_string),
        merchant_id: cols.get(rec, 3).map(str::to_string),
        amount: num(4, "amount", cols.get(rec, 4), "a number")?,
        label: cols.get(rec, 5).map(|s| RawLabel::Text(s.to_string())),
        label_time: cols.get(rec, 6).map(|s| RawTimestamp::Text(s.to_string())),
        currency: cols.get(rec, 7).map(str::to_string),
        mcc: num(
            8,
            "mcc",
            cols.get(rec, 8),
            "a merchant category code (0..9999)",
        )?,
        country: cols.get(rec, 9).map(str::to_string),
        channel: cols.get(rec, 10).map(str::to_string),
        lat: num(11, "lat", cols.get(rec, 11), "a latitude")?,
        lon: num(12, "lon", cols.get(rec, 12), "a longitude")?,
    };
    raw.validate().map_err(|e| {
        let col = CSV_COLUMNS.iter().position(|c| *c == e.field).unwrap_or(0);
        (col, e)
    })
}

/// Reads a history CSV (header row with the [`CSV_COLUMNS`] names; unknown columns ignored,
/// optional ones may be absent). `on_progress` is called with the bytes read so far, every few
/// thousand rows, for progress bars.
pub fn read_history_with_progress(
    path: &Path,
    opts: ReadOptions,
    mut on_progress: impl FnMut(u64),
) -> Result<History, HistoryError> {
    let file = std::fs::File::open(path).map_err(|cause| HistoryError::Io {
        path: path.to_path_buf(),
        cause,
    })?;
    read_history_from(
        path,
        std::io::BufReader::with_capacity(1 << 20, file),
        opts,
        &mut on_progress,
    )
}

/// Reads a history CSV without progress reporting. See [`read_history_with_progress`].
pub fn read_history(path: &Path, opts: ReadOptions) -> Result<History, HistoryError> {
    read_history_with_progress(path, opts, |_| {})
}

/// Reads history CSV from any reader; `path` is only used in error messages.
pub fn read_history_from<R: Read>(
    path: &Path,
    reader: R,
    opts: ReadOptions,
    on_progress: &mut dyn FnMut(u64),
) -> Result<History, HistoryError> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(reader);
    let header = rdr
        .headers()
        .map_err(|source| HistoryError::Csv {
            path: path.to_path_buf(),
            source,
        })?
        .clone();
    let cols = Columns::from_header(path, &header)?;
    let mut out = History::default();
    let mut rec = csv::StringRecord::new();
    loop {
        match rdr.read_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => {}
            Err(source) => {
                // A broken CSV line (bad quoting, invalid UTF-8) is a row error like any other.
                let line = source.position().map(|p| p.line()).unwrap_or(0);
                let err = CsvRowError {
                    path: path.to_path_buf(),
                    line,
                    column: "(row)".into(),
                    value: String::new(),
                    reason: source.to_string(),
                };
                if opts.skip_invalid && matches!(source.kind(), csv::ErrorKind::Utf8 { .. }) {
                    out.skipped.push(err);
                    continue;
                }
                return Err(HistoryError::Csv {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        let parsed = parse_row(&cols, &rec).and_then(|t| match opts.future_rule {
            Some((received, skew)) => super::check_not_future(&t, received, skew)
                .map(|()| t)
                .map_err(|e| (1, e)),
            None => Ok(t),
        });
        match parsed {
            Ok(t) => out.transactions.push(t),
            Err((col, e)) => {
                let value = cols.idx[col]
                    .and_then(|i| rec.get(i))
                    .unwrap_or("")
                    .to_string();
                let err = CsvRowError {
                    path: path.to_path_buf(),
                    line,
                    column: CSV_COLUMNS[col].to_string(),
                    value,
                    reason: e.reason,
                };
                if opts.skip_invalid {
                    out.skipped.push(err);
                } else {
                    return Err(err.into());
                }
            }
        }
        if line.is_multiple_of(8192) {
            on_progress(rec.position().map(|p| p.byte()).unwrap_or(0));
        }
    }
    Ok(out)
}

/// Writes transactions as a history CSV with the [`CSV_COLUMNS`] header.
pub fn write_history_csv<W: std::io::Write>(w: W, txs: &[Transaction]) -> csv::Result<()> {
    let mut wtr = csv::Writer::from_writer(w);
    wtr.write_record(CSV_COLUMNS)?;
    for t in txs {
        wtr.write_record(csv_fields(t))?;
    }
    wtr.flush()?;
    Ok(())
}

/// The 13 CSV fields of a transaction, in [`CSV_COLUMNS`] order.
pub fn csv_fields(t: &Transaction) -> [String; 13] {
    let opt = |v: Option<String>| v.unwrap_or_default();
    [
        t.transaction_id.clone(),
        format_timestamp(t.timestamp_ms),
        t.card_id.clone(),
        t.merchant_id.clone(),
        format!("{:.2}", t.amount),
        opt(t.label.map(|l| if l { "1".into() } else { "0".into() })),
        opt(t.label_time_ms.map(format_timestamp)),
        opt(t.currency.clone()),
        opt(t.mcc.map(|m| m.to_string())),
        opt(t.country.clone()),
        opt(t.channel.map(|c| c.as_str().to_string())),
        opt(t.lat.map(|v| format!("{v:.4}"))),
        opt(t.lon.map(|v| format!("{v:.4}"))),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_errors_name_line_column_and_value() {
        let data = "transaction_id,timestamp,card_id,merchant_id,amount,extra\n\
                    t1,2018-04-01T00:00:31Z,c1,m1,10.0,x\n\
                    t2,2018-04-01T00:00:32Z,c1,m1,abc,x\n";
        let err = read_history_from(
            Path::new("h.csv"),
            data.as_bytes(),
            ReadOptions::default(),
            &mut |_| {},
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("h.csv:3"), "{msg}");
        assert!(msg.contains("`amount`") && msg.contains("`abc`"), "{msg}");
        let h = read_history_from(
            Path::new("h.csv"),
            data.as_bytes(),
            ReadOptions {
                skip_invalid: true,
                ..ReadOptions::default()
            },
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(h.transactions.len(), 1);
        assert_eq!(h.skipped.len(), 1);
        assert_eq!(h.skipped[0].line, 3);
    }

    /// The trainer refuses history rows the scorer would refuse as future-dated.
    #[test]
    fn rows_beyond_the_future_rule_are_refused_naming_line_and_column() {
        let data = "transaction_id,timestamp,card_id,merchant_id,amount\n\
                    t1,2018-04-01T00:00:31Z,c1,m1,10.0\n\
                    t2,2018-04-03T00:00:00Z,c1,m1,12.0\n";
        let received = crate::record::parse_timestamp("t", "2018-04-02T00:00:00Z").unwrap();
        let opts = ReadOptions {
            skip_invalid: false,
            future_rule: Some((received, 300_000)),
        };
        let err =
            read_history_from(Path::new("h.csv"), data.as_bytes(), opts, &mut |_| {}).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("h.csv:3") && msg.contains("`timestamp`"),
            "{msg}"
        );
        assert!(msg.contains("max_future_skew"), "{msg}");
        let opts = ReadOptions {
            skip_invalid: true,
            ..opts
        };
        let h = read_history_from(Path::new("h.csv"), data.as_bytes(), opts, &mut |_| {}).unwrap();
        assert_eq!((h.transactions.len(), h.skipped.len()), (1, 1));
    }

    #[test]
    fn missing_required_column_is_named() {
        let data = "transaction_id,timestamp,card_id,amount\n";
        let err = read_history_from(
            Path::new("h.csv"),
            data.as_bytes(),
            ReadOptions::default(),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("merchant_id"));
    }
}
