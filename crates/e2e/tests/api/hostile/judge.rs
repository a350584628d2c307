//! Judging answers against the contract: each answer against what its request must get, in
//! order, and the [`Ledger`] of what each key may hold, which reads are checked against during
//! the run and the database at its end.

use super::case::{BODY_LIMIT, Case, Expect};
use super::wire::Answer;
use std::collections::HashMap;

/// What each of a worker's keys may hold: the value of its last acknowledged write, or, after a
/// write whose fate is unknown (a `503`, a dropped connection), any of the candidates.
#[derive(Default)]
pub struct Ledger(pub HashMap<String, Vec<Option<f64>>>);

impl Ledger {
    fn candidates(&mut self, key: &str) -> &mut Vec<Option<f64>> {
        self.0.entry(key.to_owned()).or_insert_with(|| vec![None])
    }

    pub fn acknowledged(&mut self, key: &str, value: f64) {
        *self.candidates(key) = vec![Some(value)];
    }

    fn maybe(&mut self, key: &str, value: f64) {
        self.candidates(key).push(Some(value));
    }
}

fn is_failure(answer: &Answer) -> bool {
    answer.json.as_ref().is_some_and(|json| {
        json["success"] == serde_json::json!(false) && json["message"].is_string()
    })
}

fn message(answer: &Answer) -> Option<&str> {
    answer.json.as_ref()?["message"].as_str()
}

fn judge(expect: &Expect, answer: &Answer, ledger: &mut Ledger) -> Result<(), String> {
    let status = answer.status;
    if let Expect::Head(allowed) = expect {
        return match allowed.contains(&status) && answer.json.is_none() {
            true => Ok(()),
            false => Err(format!("HEAD got {answer:?}")),
        };
    }
    if answer.json.is_none() {
        // hyper answers what it cannot parse itself, with an empty body; nothing else may.
        let broken_http = matches!(expect, Expect::Garbage { .. });
        return match broken_http && matches!(status, 400 | 414 | 431) {
            true => Ok(()),
            false => Err(format!("{status} without a JSON body")),
        };
    }
    let succeeded = answer.json.as_ref().unwrap()["success"] == serde_json::json!(true);
    let data = answer.json.as_ref().unwrap()["data"].as_f64();
    let broker_trouble = matches!(status, 503 | 504) && is_failure(answer);
    let ok = match expect {
        Expect::Write { key, value } => match status {
            200 if succeeded => {
                ledger.acknowledged(key, *value);
                true
            }
            503 if is_failure(answer) => {
                ledger.maybe(key, *value);
                true
            }
            _ => false,
        },
        Expect::ReadOwn { key } => match status {
            200 if succeeded => {
                let Some(value) = data else {
                    return Err("a 200 read without a number".into());
                };
                let candidates = ledger.candidates(key);
                if !candidates.contains(&Some(value)) {
                    return Err(format!("read {value}, expected one of {candidates:?}"));
                }
                true
            }
            404 if is_failure(answer) => ledger.candidates(key).contains(&None),
            _ => broker_trouble,
        },
        Expect::ReadAbsent => (status == 404 && is_failure(answer)) || broker_trouble,
        Expect::ReadOrBad => {
            (status == 200 && succeeded && data.is_some())
                || (matches!(status, 400 | 404) && is_failure(answer))
                || broker_trouble
        }
        Expect::Status(expected, text) => {
            status == *expected
                && is_failure(answer)
                && text.is_none_or(|text| message(answer) == Some(text))
        }
        Expect::TooLarge => {
            status == 413
                && is_failure(answer)
                && message(answer).is_some_and(|m| m.contains(&BODY_LIMIT.to_string()))
        }
        Expect::Garbage { write } => match (status, write) {
            (200, Some((key, value))) if succeeded => {
                ledger.acknowledged(key, *value);
                true
            }
            (503, Some((key, value))) if is_failure(answer) => {
                ledger.maybe(key, *value);
                true
            }
            (400..=499, _) => is_failure(answer),
            _ => false,
        },
        Expect::Head(_) => unreachable!("handled above"),
    };
    match ok {
        true => Ok(()),
        false => Err(format!(
            "expected {expect:?}, got {status} {}",
            answer.json.as_ref().unwrap()
        )),
    }
}

/// Judges every answer of a case against its requests, in order, updating the ledger.
pub fn judge_case(case: &Case, answers: &[Answer], ledger: &mut Ledger) -> Result<(), String> {
    // After a request that may end the connection, the ones behind it may go unanswered.
    let mut excused = false;
    let mut first_error = None;
    for (index, part) in case.parts.iter().enumerate() {
        let may_vanish = matches!(part.expect, Expect::Garbage { .. } | Expect::TooLarge);
        let verdict = match answers.get(index) {
            Some(answer) => judge(&part.expect, answer, ledger),
            None if excused || may_vanish => Ok(()),
            None => Err("no answer".into()),
        };
        if verdict.is_err() || answers.get(index).is_none() {
            // Not answered, or wrongly: the write it carries may or may not have happened.
            let write = match &part.expect {
                Expect::Write { key, value } => Some((key, *value)),
                Expect::Garbage { write } => write.as_ref().map(|(k, v)| (k, *v)),
                _ => None,
            };
            if let Some((key, value)) = write {
                ledger.maybe(key, value);
            }
        }
        if let Err(err) = verdict {
            first_error.get_or_insert(format!("request {} ({}): {err}", index + 1, part.label));
        }
        excused |= part.ends || may_vanish;
    }
    if let Some(err) = first_error {
        return Err(err);
    }
    // Broken framing can make the server see more requests than were meant; all must fail.
    let broken = matches!(case.parts.last().unwrap().expect, Expect::Garbage { .. });
    for answer in answers.iter().skip(case.parts.len()) {
        if !broken {
            return Err(format!("an answer too many: {answer:?}"));
        }
        judge(&Expect::Garbage { write: None }, answer, ledger)?;
    }
    Ok(())
}
