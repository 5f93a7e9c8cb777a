//! Constraint flags as people type them (`jobs=10`, `api=100/1000/5`),
//! parsed by clap so that a malformed one is a usage error naming its flag.

use leasehold::proto::v1::{self, constraint::Kind};

/// `--concurrency KEY=LIMIT`.
pub fn concurrency(text: &str) -> Result<v1::Constraint, String> {
    let (key, fields) = split(text, "KEY=LIMIT", 1, 1)?;
    let limit = number(fields[0], "LIMIT")?;
    Ok(constraint(Kind::Concurrency(v1::Concurrency {
        key,
        limit,
    })))
}

/// `--throttle KEY=LIMIT/PERIOD_MS[/BURST]`, burst 0 when left out.
pub fn throttle(text: &str) -> Result<v1::Constraint, String> {
    let (key, fields) = split(text, "KEY=LIMIT/PERIOD_MS[/BURST]", 2, 3)?;
    let limit = number(fields[0], "LIMIT")?;
    let period_ms = number(fields[1], "PERIOD_MS")?;
    let burst = fields.get(2).map_or(Ok(0), |b| number(b, "BURST"))?;
    Ok(constraint(Kind::Throttle(v1::Throttle {
        key,
        limit,
        period_ms,
        burst,
    })))
}

/// `--rate-limit KEY=LIMIT/PERIOD_MS`.
pub fn rate_limit(text: &str) -> Result<v1::Constraint, String> {
    let (key, fields) = split(text, "KEY=LIMIT/PERIOD_MS", 2, 2)?;
    let limit = number(fields[0], "LIMIT")?;
    let period_ms = number(fields[1], "PERIOD_MS")?;
    Ok(constraint(Kind::RateLimit(v1::RateLimit {
        key,
        limit,
        period_ms,
    })))
}

/// `--semaphore KEY=WEIGHT`.
pub fn semaphore(text: &str) -> Result<v1::Constraint, String> {
    let (key, fields) = split(text, "KEY=WEIGHT", 1, 1)?;
    let weight = number(fields[0], "WEIGHT")?;
    Ok(constraint(Kind::Semaphore(v1::Semaphore { key, weight })))
}

/// `--nodes host:port`: checked here so that a typo is a usage error,
/// not a failed connection.
pub fn node_address(text: &str) -> Result<String, String> {
    match text.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok(text.to_string())
        }
        _ => Err("expected HOST:PORT, e.g. 127.0.0.1:7070".into()),
    }
}

fn constraint(kind: Kind) -> v1::Constraint {
    v1::Constraint { kind: Some(kind) }
}

/// The key before the last `=` (so a key may itself contain `=`), and the
/// `/`-separated values after it, `min..=max` of them.
fn split<'a>(
    text: &'a str,
    form: &str,
    min: usize,
    max: usize,
) -> Result<(String, Vec<&'a str>), String> {
    let expected = || format!("expected {form}");
    let (key, values) = text.rsplit_once('=').ok_or_else(expected)?;
    if key.is_empty() {
        return Err(format!("{}: the key is empty", expected()));
    }
    let fields: Vec<&str> = values.split('/').collect();
    if !(min..=max).contains(&fields.len()) {
        return Err(expected());
    }
    Ok((key.to_string(), fields))
}

fn number<T: std::str::FromStr>(text: &str, name: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{name} must be a non-negative integer, got {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_specs_parse() {
        let Some(Kind::Throttle(t)) = throttle("api=100/1000/5").unwrap().kind else {
            panic!("not a throttle");
        };
        assert_eq!(
            (t.key.as_str(), t.limit, t.period_ms, t.burst),
            ("api", 100, 1000, 5)
        );
        let Some(Kind::Throttle(t)) = throttle("api=100/1000").unwrap().kind else {
            panic!("not a throttle");
        };
        assert_eq!(t.burst, 0);
        let Some(Kind::Concurrency(c)) = concurrency("a=b=3").unwrap().kind else {
            panic!("not a concurrency");
        };
        assert_eq!((c.key.as_str(), c.limit), ("a=b", 3));
        assert!(rate_limit("r=10/60000").is_ok());
        assert!(semaphore("gpu=2").is_ok());
    }

    #[test]
    fn malformed_specs_say_the_expected_form() {
        assert_eq!(concurrency("jobs").unwrap_err(), "expected KEY=LIMIT");
        assert!(concurrency("=3").unwrap_err().contains("key is empty"));
        assert!(concurrency("jobs=-1").unwrap_err().contains("LIMIT"));
        assert!(throttle("api=1")
            .unwrap_err()
            .contains("KEY=LIMIT/PERIOD_MS[/BURST]"));
        assert!(throttle("api=1/2/3/4").is_err());
        assert!(rate_limit("r=1/x").unwrap_err().contains("PERIOD_MS"));
        assert!(node_address("localhost").is_err());
        assert!(node_address("localhost:7070").is_ok());
    }
}
