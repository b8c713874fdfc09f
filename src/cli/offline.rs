//! The offline commands: `generate`, `train`, `evaluate`, `features`. Each reads its inputs,
//! calls `vigil::offline` (or the generator) and prints; errors are `anyhow` with context naming
//! the file or flag at fault.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::progress::Bars;

use vigil::decision::Thresholds;
use vigil::features::FeatureSpec;
use vigil::forest::train::{ClassWeight, MaxFeatures, RandomForestParams};
use vigil::generate::{self, GeneratorConfig};
use vigil::model;
use vigil::offline::{self, parse_instant, Period, Reporter, SplitSpec};
use vigil::record::{self, format_timestamp, History, ReadOptions, Transaction};

pub(crate) const DEFAULT_SPEC: &str = "training/features.toml";
pub(crate) const DEFAULT_MODEL: &str = vigil::serve::config::DEFAULT_MODEL;
pub(crate) const DEFAULT_DATA: &str = "data/sample.csv";

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Output CSV file.
    #[arg(long)]
    out: PathBuf,
    /// Number of transactions.
    #[arg(long, default_value_t = 100_000)]
    rows: u64,
    /// Random seed: the same seed and options give the same file.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Target fraction of fraudulent transactions.
    #[arg(long)]
    fraud_rate: Option<f64>,
    /// Number of cards (default: scales with rows).
    #[arg(long)]
    cards: Option<u64>,
    /// Number of merchants (default: scales with rows).
    #[arg(long)]
    merchants: Option<u64>,
    /// First day of the history (YYYY-MM-DD).
    #[arg(long)]
    start: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct HistoryArgs {
    /// History CSV (header row; transaction_id, timestamp, card_id, merchant_id, amount required).
    #[arg(long, default_value = DEFAULT_DATA)]
    pub(crate) data: PathBuf,
    /// Count and report invalid rows instead of stopping at the first.
    #[arg(long)]
    pub(crate) skip_invalid: bool,
    /// Rows dated more than this after now are invalid, as the scorer refuses such
    /// transactions ([scoring] max_future_skew); "0s" turns the rule off.
    #[arg(long, default_value = "5m")]
    pub(crate) max_future_skew: String,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    history: HistoryArgs,
    /// Feature spec (TOML).
    #[arg(long, default_value = DEFAULT_SPEC)]
    features: PathBuf,
    /// Output model file.
    #[arg(long, default_value = DEFAULT_MODEL)]
    out: PathBuf,
    /// Model name recorded in the file and in every verdict (default: the output file stem).
    #[arg(long)]
    name: Option<String>,
    /// Partitions of the transactions topic the model will be served from: window state is
    /// split per partition in training exactly as `vigil serve` splits it, so merchant windows
    /// (which see a merchant's transactions within one partition) match. Recorded in the model.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    partitions: u32,
    /// Start of the training period (YYYY-MM-DD or RFC 3339); rows before it only warm up windows.
    #[arg(long, requires = "train_to")]
    train_from: Option<String>,
    /// End (exclusive) of the training period.
    #[arg(long, requires = "train_from")]
    train_to: Option<String>,
    /// Start of the test period.
    #[arg(long, requires_all = ["test_to", "train_from"])]
    test_from: Option<String>,
    /// End (exclusive) of the test period.
    #[arg(long, requires = "test_from")]
    test_to: Option<String>,
    /// Without dates: fraction of the (post-warm-up) time span used for training; the rest,
    /// after --gap, is the test period. 1.0 trains on everything.
    #[arg(long, default_value_t = 0.7)]
    train_frac: f64,
    /// Without dates: leading span used only to warm up window state (e.g. 7d, 12h).
    #[arg(long, default_value = "7d")]
    warmup: String,
    /// Without dates: gap between training and test (label delay), e.g. 7d.
    #[arg(long, default_value = "0d")]
    gap: String,
    /// Number of trees.
    #[arg(long, default_value_t = 100)]
    trees: usize,
    /// Maximum tree depth.
    #[arg(long, default_value_t = 12)]
    max_depth: usize,
    /// Minimum (weighted) samples in a leaf.
    #[arg(long, default_value_t = 5)]
    min_samples_leaf: usize,
    /// Minimum samples to split a node.
    #[arg(long, default_value_t = 10)]
    min_samples_split: usize,
    /// Features tried per split: `sqrt`, `log2`, `all`, a count, or a fraction like 0.3.
    #[arg(long, default_value = "sqrt")]
    max_features: String,
    /// Bootstrap sample size as a fraction of the training rows.
    #[arg(long, default_value_t = 1.0)]
    bootstrap: f64,
    /// Class imbalance handling: `balanced`, `none`, or the weight of a fraud row (e.g. 10).
    #[arg(long, default_value = "balanced")]
    class_weight: String,
    /// Random seed (training is deterministic for a fixed seed).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// k of card precision@k (cards per day).
    #[arg(long, default_value_t = 100)]
    k: usize,
    /// Review threshold (default: suggested from the test period).
    #[arg(long, requires = "decline_threshold")]
    review_threshold: Option<f32>,
    /// Decline threshold (default: suggested from the test period).
    #[arg(long, requires = "review_threshold")]
    decline_threshold: Option<f32>,
    /// Directory for the evaluation report (plots); default reports/<model name>.
    #[arg(long)]
    report: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct EvaluateArgs {
    /// Model file.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: PathBuf,
    #[command(flatten)]
    history: HistoryArgs,
    /// Score rows from this instant (earlier rows only build window state).
    #[arg(long)]
    from: Option<String>,
    /// Score rows before this instant.
    #[arg(long)]
    to: Option<String>,
    /// k of card precision@k.
    #[arg(long, default_value_t = 100)]
    k: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Write one CSV row per scored transaction (transaction_id, card_id, timestamp, score, label).
    #[arg(long)]
    predictions: Option<PathBuf>,
    /// Directory for the report (plots); default reports/evaluate-<model name>.
    #[arg(long)]
    report: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct FeaturesArgs {
    #[command(flatten)]
    history: HistoryArgs,
    /// Feature spec (TOML).
    #[arg(long, default_value = DEFAULT_SPEC)]
    features: PathBuf,
    /// Output CSV: transaction_id, then one column per feature.
    #[arg(long)]
    out: PathBuf,
    /// Split window state into this many partitions, as `vigil serve` does for a transactions
    /// topic with that many (see `vigil train --partitions`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    partitions: u32,
}

/// Parses `30m`, `12h`, `7d`, `90s`, `1w` into milliseconds.
fn parse_span(flag: &str, s: &str) -> Result<i64> {
    vigil::features::parse_duration(s)
        .ok_or_else(|| anyhow::anyhow!("{flag} `{s}` is not a duration (examples: 30m, 12h, 7d)"))
}

/// What to add to "cannot read PATH" when PATH is a missing default: that it is the default,
/// relative to the working directory, and the flag that names another file.
pub(crate) fn default_path_hint(path: &Path, default: &str, what: &str, flag: &str) -> String {
    if path == Path::new(default) && !path.exists() {
        format!(
            " ({default} is the default {what} path, relative to the working directory: run from \
             the vigil repository, or name one with {flag})"
        )
    } else {
        String::new()
    }
}

pub(crate) fn read_history(h: &HistoryArgs, bars: &Bars) -> Result<History> {
    let size = std::fs::metadata(&h.data)
        .with_context(|| {
            let hint = default_path_hint(&h.data, DEFAULT_DATA, "history", "--data");
            format!("cannot read history file {}{hint}", h.data.display())
        })?
        .len();
    bars.stage("reading", size);
    let skew = vigil::features::parse_duration(&h.max_future_skew).ok_or_else(|| {
        anyhow::anyhow!(
            "--max-future-skew: `{}` is not a duration (examples: 30s, 5m, 1h; 0s: off)",
            h.max_future_skew
        )
    })?;
    let read = record::read_history_with_progress(
        &h.data,
        ReadOptions {
            skip_invalid: h.skip_invalid,
            future_rule: Some((chrono::Utc::now().timestamp_millis(), skew)),
        },
        |b| bars.progress(b),
    );
    let mut history = match read {
        Ok(history) => history,
        Err(e @ record::HistoryError::Row(_)) => {
            bars.finish();
            bail!("{e}\nhint: --skip-invalid counts, reports and skips invalid rows instead of stopping")
        }
        Err(e) => {
            bars.finish();
            return Err(e.into());
        }
    };
    bars.progress(size);
    bars.finish();
    if !history.skipped.is_empty() {
        errln!(
            "skipped {} invalid rows in {}; the first ones:",
            history.skipped.len(),
            h.data.display()
        );
        for e in history.skipped.iter().take(5) {
            errln!("  {e}");
        }
    }
    if history.transactions.is_empty() {
        bail!("{} has no valid rows", h.data.display());
    }
    history.sort_by_time();
    Ok(history)
}

fn load_spec(path: &Path) -> Result<Arc<FeatureSpec>> {
    match FeatureSpec::load(path) {
        Ok(spec) => Ok(Arc::new(spec)),
        // The I/O error already names the file; the others name the key inside it.
        Err(e @ vigil::features::SpecError::Io { .. }) => {
            let hint = default_path_hint(path, DEFAULT_SPEC, "feature spec", "--features");
            bail!("{e}{hint}")
        }
        Err(e) => bail!("{}: {e}", path.display()),
    }
}

pub fn cmd_generate(a: GenerateArgs) -> Result<()> {
    let mut cfg = GeneratorConfig {
        rows: a.rows,
        seed: a.seed,
        ..GeneratorConfig::default()
    };
    if let Some(r) = a.fraud_rate {
        cfg.fraud_rate = r;
    }
    cfg.cards = a.cards;
    cfg.merchants = a.merchants;
    if let Some(s) = &a.start {
        cfg.start_ms = parse_instant(s).map_err(|e| anyhow::anyhow!("--start `{s}`: {e}"))?;
    }
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create directory {}", dir.display()))?;
    }
    let file =
        File::create(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    let bars = Bars::new();
    bars.stage("generate", a.rows);
    let summary = generate::generate(&cfg, BufWriter::with_capacity(1 << 20, file), &mut |n| {
        bars.progress(n)
    })
    .with_context(|| format!("generating {}", a.out.display()))?;
    bars.finish();
    outln!(
        "wrote {} rows ({} fraud, {:.2}%) for {} cards and {} merchants, {} to {}, to {}",
        summary.rows,
        summary.frauds,
        100.0 * summary.frauds as f64 / summary.rows.max(1) as f64,
        summary.cards,
        summary.merchants,
        format_timestamp(summary.first_ms),
        format_timestamp(summary.last_ms),
        a.out.display()
    );
    for (pattern, n) in &summary.by_pattern {
        outln!("  {pattern:<22} {n}");
    }
    Ok(())
}

fn forest_params(a: &TrainArgs) -> Result<RandomForestParams> {
    let max_features = match a.max_features.as_str() {
        "sqrt" => MaxFeatures::Sqrt,
        "log2" => MaxFeatures::Log2,
        "all" => MaxFeatures::All,
        s => match (s.parse::<usize>(), s.parse::<f64>()) {
            (Ok(n), _) => MaxFeatures::Count(n),
            (_, Ok(f)) => MaxFeatures::Fraction(f as f32),
            _ => bail!("--max-features `{s}`: expected sqrt, log2, all, a count or a fraction"),
        },
    };
    let class_weight = match a.class_weight.as_str() {
        "balanced" => ClassWeight::Balanced,
        "none" => ClassWeight::None,
        s => ClassWeight::Positive(s.parse::<f32>().map_err(|_| {
            anyhow::anyhow!("--class-weight `{s}`: expected balanced, none or a number")
        })?),
    };
    Ok(RandomForestParams::new()
        .n_trees(a.trees)
        .max_depth(Some(a.max_depth))
        .min_samples_leaf(a.min_samples_leaf)
        .min_samples_split(a.min_samples_split)
        .max_features(max_features)
        .bootstrap_fraction(a.bootstrap as f32)
        .class_weight(class_weight)
        .seed(a.seed))
}

pub fn cmd_train(a: TrainArgs) -> Result<()> {
    let bars = Bars::new();
    let spec = load_spec(&a.features)?;
    let params = linfa::ParamGuard::check(forest_params(&a)?)
        .map_err(|e| anyhow::anyhow!("invalid training parameters: {e}"))?;
    let split = match (&a.train_from, &a.train_to) {
        (Some(f), Some(t)) => {
            let date = |flag: &str, s: &str| {
                parse_instant(s).map_err(|e| anyhow::anyhow!("{flag} `{s}`: {e}"))
            };
            let train = Period {
                from_ms: date("--train-from", f)?,
                to_ms: date("--train-to", t)?,
            };
            let test = match (&a.test_from, &a.test_to) {
                (Some(f), Some(t)) => Some(Period {
                    from_ms: date("--test-from", f)?,
                    to_ms: date("--test-to", t)?,
                }),
                _ => None,
            };
            SplitSpec::Dates { train, test }
        }
        _ => SplitSpec::Fractions {
            warmup_ms: parse_span("--warmup", &a.warmup)?,
            train_frac: a.train_frac,
            gap_ms: parse_span("--gap", &a.gap)?,
        },
    };
    let thresholds = match (a.review_threshold, a.decline_threshold) {
        (Some(r), Some(d)) => Some(Thresholds::new(r, d)?),
        _ => None,
    };
    let model_id = a.name.clone().unwrap_or_else(|| {
        a.out
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    });
    let history = read_history(&a.history, &bars)?;
    let opts = offline::TrainOptions {
        model_id: model_id.clone(),
        data_label: a.history.data.display().to_string(),
        split,
        params,
        k: a.k,
        thresholds,
        partitions: a.partitions,
    };
    let trained = offline::train(spec, &history.transactions, &opts, &bars)?;
    let h = &trained.header;
    outln!(
        "trained {} trees (max depth {}, {} nodes) on {} rows ({} fraud) from {} to {} in {:.1}s",
        h.n_trees,
        h.max_depth,
        h.n_nodes,
        h.training.train_rows,
        h.training.train_frauds,
        h.training.train_from,
        h.training.train_to,
        h.training.fit_seconds
    );
    model::save(&a.out, h, &trained.forest)
        .with_context(|| format!("writing model {}", a.out.display()))?;
    // Read back what was written: the file on disk is what gets served.
    let loaded = model::load(&a.out, None)
        .with_context(|| format!("re-reading model {}", a.out.display()))?;
    outln!("model {} written to {}", loaded.name(), a.out.display());
    outln!(
        "thresholds: review >= {:.4}, decline >= {:.4}{}",
        h.thresholds.review,
        h.thresholds.decline,
        if a.review_threshold.is_some() {
            " (given)"
        } else {
            " (suggested from the test period)"
        }
    );
    match &h.evaluation {
        Some(ev) => {
            outln!(
                "\ntest period {} to {}: {} rows, {} fraud",
                h.training.test_from,
                h.training.test_to,
                ev.rows,
                ev.frauds
            );
            outln!("{ev}");
            let dir = a
                .report
                .clone()
                .unwrap_or_else(|| PathBuf::from("reports").join(&model_id));
            let files = vigil::offline::report::write_report(
                &dir,
                &format!("{} on the test period", loaded.name()),
                ev,
            )
            .with_context(|| format!("writing report to {}", dir.display()))?;
            outln!("report: {}", report_index(&dir, &files));
        }
        None => outln!("no test period (--train-frac 1.0): nothing evaluated"),
    }
    Ok(())
}

fn report_index(dir: &Path, files: &[PathBuf]) -> String {
    files
        .iter()
        .find(|f| f.extension().is_some_and(|e| e == "html"))
        .unwrap_or(&dir.to_path_buf())
        .display()
        .to_string()
}

pub fn cmd_evaluate(a: EvaluateArgs) -> Result<()> {
    let bars = Bars::new();
    let model = vigil::serve::load_model(&a.model)?;
    let history = read_history(&a.history, &bars)?;
    let txs = &history.transactions;
    let instant = |flag: &str, s: &Option<String>, default: i64| -> Result<i64> {
        match s {
            Some(s) => parse_instant(s).map_err(|e| anyhow::anyhow!("{flag} `{s}`: {e}")),
            None => Ok(default),
        }
    };
    let period = Period {
        from_ms: instant("--from", &a.from, i64::MIN)?,
        to_ms: instant("--to", &a.to, i64::MAX)?,
    };
    let scored = offline::score_history(&model, txs, period, &bars);
    if scored.rows.is_empty() {
        bail!("no rows of {} fall in {period}", a.history.data.display());
    }
    let ev = offline::evaluate_scored(txs, &scored, a.k, &model.header.thresholds)?;
    if let Some(p) = &a.predictions {
        write_predictions(p, txs, &scored)
            .with_context(|| format!("writing predictions to {}", p.display()))?;
    }
    let dir = a.report.clone().unwrap_or_else(|| {
        PathBuf::from("reports").join(format!("evaluate-{}", model.header.model_id))
    });
    let files = vigil::offline::report::write_report(&dir, &model.name(), &ev)
        .with_context(|| format!("writing report to {}", dir.display()))?;
    if a.json {
        outln!("{}", serde_json::to_string(&ev)?);
    } else {
        outln!(
            "model {}: {} scored rows ({} labelled, {} fraud)",
            model.name(),
            scored.rows.len(),
            ev.rows,
            ev.frauds
        );
        outln!("{ev}");
        outln!("report: {}", report_index(&dir, &files));
    }
    Ok(())
}

fn write_predictions(
    path: &Path,
    txs: &[Transaction],
    scored: &offline::PeriodScores,
) -> Result<()> {
    let file = File::create(path)?;
    let mut w = csv::Writer::from_writer(BufWriter::new(file));
    w.write_record(["transaction_id", "card_id", "timestamp", "score", "label"])?;
    for (j, &i) in scored.rows.iter().enumerate() {
        let t = &txs[i];
        w.write_record([
            t.transaction_id.as_str(),
            t.card_id.as_str(),
            &format_timestamp(t.timestamp_ms),
            &format!("{:.6}", scored.scores[j]),
            match t.label {
                Some(true) => "1",
                Some(false) => "0",
                None => "",
            },
        ])?;
    }
    w.flush()?;
    Ok(())
}

pub fn cmd_features(a: FeaturesArgs) -> Result<()> {
    let bars = Bars::new();
    let spec = load_spec(&a.features)?;
    let history = read_history(&a.history, &bars)?;
    let txs = &history.transactions;
    let file =
        File::create(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    let mut w = csv::Writer::from_writer(BufWriter::with_capacity(1 << 20, file));
    let mut header = vec!["transaction_id".to_string()];
    header.extend(spec.feature_names().iter().cloned());
    w.write_record(&header)?;
    let mut err: Option<csv::Error> = None;
    let mut fields: Vec<String> = Vec::with_capacity(header.len());
    bars.stage("features", txs.len() as u64);
    vigil::offline::replay_history(&spec, txs, a.partitions, |i, row| {
        if err.is_some() {
            return;
        }
        fields.clear();
        fields.push(txs[i].transaction_id.clone());
        fields.extend(row.iter().map(|v| v.to_string()));
        if let Err(e) = w.write_record(&fields) {
            err = Some(e);
        }
        if i % 65_536 == 0 {
            bars.progress(i as u64);
        }
    });
    bars.finish();
    if let Some(e) = err {
        return Err(e).with_context(|| format!("writing {}", a.out.display()));
    }
    w.flush()
        .with_context(|| format!("writing {}", a.out.display()))?;
    outln!(
        "wrote {} rows x {} features to {}",
        txs.len(),
        spec.n_features(),
        a.out.display()
    );
    Ok(())
}
