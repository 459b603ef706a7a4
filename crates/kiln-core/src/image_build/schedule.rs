//! `spec.schedule`: five-field cron expressions and `@` macros, in UTC.
//!
//! Pure: [`Schedule::prev`] and [`Schedule::next`] find fire times around an
//! instant; `decide` rebuilds when the latest image predates the most recent
//! one.
//!
//! kiln parses the expression itself, so that an error names the field and
//! only the grammar kiln documents is accepted (croner would also take
//! seconds, years, `L`, `W`, `#`, a `+` day-of-week, and names in any field).
//! The parsed fields go to croner as plain numbers and `*`, and croner finds
//! the fire times, with Vixie cron's rule for the two day fields.

use croner::{
    Cron,
    parser::{CronParser, Seconds, Year},
};
use jiff::{Timestamp, tz::TimeZone};

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    cron: Cron,
    /// False when no date matches (February 30th).
    fires: bool,
}

/// Why a schedule does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ScheduleError(String);

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
/// The most days each month can have.
const MONTH_DAYS: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
/// The five fields, in order; day-of-week 7 is Sunday too (croner folds it
/// into 0).
const FIELDS: [Field; 5] = [
    Field::new("minute", 0, 59, &[]),
    Field::new("hour", 0, 23, &[]),
    Field::new("day-of-month", 1, 31, &[]),
    Field::new("month", 1, 12, &MONTHS),
    Field::new("day-of-week", 0, 7, &WEEKDAYS),
];

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

impl Field {
    const fn new(name: &'static str, min: u32, max: u32, names: &'static [&'static str]) -> Self {
        Field {
            name,
            min,
            max,
            names,
        }
    }

    fn value(&self, s: &str) -> Result<u32, ScheduleError> {
        let upper = s.to_ascii_uppercase();
        if let Some(i) = self.names.iter().position(|n| *n == upper) {
            return Ok(self.min + i as u32);
        }
        let v: u32 = s.parse().map_err(|_| {
            ScheduleError(format!("{}: '{s}' is not a number or a name", self.name))
        })?;
        if v < self.min || v > self.max {
            return Err(ScheduleError(format!(
                "{}: {v} is outside {}-{}",
                self.name, self.min, self.max
            )));
        }
        Ok(v)
    }

    /// The bit set of one field, and whether it was `*` (or `?`).
    fn parse(&self, text: &str) -> Result<(u64, bool), ScheduleError> {
        let mut bits = 0u64;
        let star = text == "*" || text == "?";
        for part in text.split(',') {
            let (range, step) = match part.split_once('/') {
                Some((r, s)) => {
                    let step: u32 = s.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                        ScheduleError(format!(
                            "{}: step '{s}' must be a positive number",
                            self.name
                        ))
                    })?;
                    (r, step)
                }
                None => (part, 1),
            };
            let (lo, hi) = if range == "*" || range == "?" {
                (self.min, self.max)
            } else if let Some((a, b)) = range.split_once('-') {
                (self.value(a)?, self.value(b)?)
            } else {
                let v = self.value(range)?;
                // `5/15` means from 5 to the end, every 15.
                (v, if step > 1 { self.max } else { v })
            };
            if lo > hi {
                return Err(ScheduleError(format!(
                    "{}: range {range} runs backwards",
                    self.name
                )));
            }
            for v in (lo..=hi).step_by(step as usize) {
                bits |= 1 << v;
            }
        }
        Ok((bits, star))
    }

    /// The field as croner reads it: `*`, or the list of its values.
    fn canonical(&self, (bits, star): (u64, bool)) -> String {
        if star {
            return "*".to_owned();
        }
        let values: Vec<String> = (self.min..=self.max)
            .filter(|v| bits & (1 << v) != 0)
            .map(|v| v.to_string())
            .collect();
        values.join(",")
    }
}

impl Schedule {
    /// Parses five fields (minute hour day-of-month month day-of-week) or a
    /// macro (`@hourly`, `@daily`/`@midnight`, `@weekly`, `@monthly`,
    /// `@yearly`/`@annually`).
    pub fn parse(text: &str) -> Result<Self, ScheduleError> {
        let expanded = match text.trim() {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            "@yearly" | "@annually" => "0 0 1 1 *",
            other => other,
        };
        let texts: Vec<&str> = expanded.split_whitespace().collect();
        if texts.len() != FIELDS.len() {
            return Err(ScheduleError(format!(
                "'{text}' has {} fields; cron takes five (minute hour day-of-month month day-of-week) or a macro such as @weekly",
                texts.len()
            )));
        }
        let mut parsed = [(0, false); 5];
        for ((field, text), out) in FIELDS.iter().zip(texts).zip(&mut parsed) {
            *out = field.parse(text)?;
        }
        // croner searches up to year 5000 before it gives up on a day no
        // selected month has (February 30th); tell it at once.
        let [_, _, (days, dom_star), (months, _), (_, dow_star)] = parsed;
        let fires = dom_star
            || !dow_star
            || (1..=12).any(|m| {
                months & (1 << m) != 0 && days & !(u64::MAX << (MONTH_DAYS[m - 1] + 1)) != 0
            });
        // Plain numbers and `*` only, so croner's extensions stay out.
        let pattern: Vec<String> = FIELDS
            .iter()
            .zip(parsed)
            .map(|(field, bits)| field.canonical(bits))
            .collect();
        CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            // Both day fields restricted: either matches, as in Vixie cron.
            .dom_and_dow(false)
            .build()
            .parse(&pattern.join(" "))
            .map(|cron| Schedule { cron, fires })
            .map_err(|e| ScheduleError(format!("'{text}': {e}")))
    }

    /// The latest fire time at or before `at`.
    pub fn prev(&self, at: Timestamp) -> Option<Timestamp> {
        let at = at.to_zoned(TimeZone::UTC);
        let found = self
            .fires
            .then(|| self.cron.find_previous_occurrence(&at, true));
        Some(found?.ok()?.timestamp())
    }

    /// The first fire time after `at`.
    pub fn next(&self, at: Timestamp) -> Option<Timestamp> {
        let at = at.to_zoned(TimeZone::UTC);
        let found = self
            .fires
            .then(|| self.cron.find_next_occurrence(&at, false));
        Some(found?.ok()?.timestamp())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn weekly_at_three_on_mondays() {
        let s = Schedule::parse("0 3 * * 1").expect("parses");
        // 2026-11-22 is a Sunday.
        let now = ts("2026-11-22T12:00:00Z");
        assert_eq!(s.prev(now), Some(ts("2026-11-16T03:00:00Z")));
        assert_eq!(s.next(now), Some(ts("2026-11-23T03:00:00Z")));
        // A fire time is its own prev, and not its own next.
        let at = ts("2026-11-23T03:00:00Z");
        assert_eq!(s.prev(at), Some(at));
        assert_eq!(s.next(at), Some(ts("2026-11-30T03:00:00Z")));
        assert_eq!(s, Schedule::parse("0 3 * * MON").expect("names"));
    }

    #[test]
    fn macros_steps_ranges_and_lists() {
        let now = ts("2026-11-22T12:34:56Z");
        let prev = |e: &str| Schedule::parse(e).expect(e).prev(now);
        assert_eq!(prev("@hourly"), Some(ts("2026-11-22T12:00:00Z")));
        assert_eq!(prev("@daily"), Some(ts("2026-11-22T00:00:00Z")));
        assert_eq!(prev("@weekly"), Some(ts("2026-11-22T00:00:00Z")));
        assert_eq!(prev("@monthly"), Some(ts("2026-11-01T00:00:00Z")));
        assert_eq!(prev("@yearly"), Some(ts("2026-01-01T00:00:00Z")));
        assert_eq!(prev("*/15 * * * *"), Some(ts("2026-11-22T12:30:00Z")));
        assert_eq!(prev("5/20 * * * *"), Some(ts("2026-11-22T12:25:00Z")));
        assert_eq!(prev("0 1-3,22 * * *"), Some(ts("2026-11-22T03:00:00Z")));
        assert_eq!(prev("0 0 29 2 *"), Some(ts("2024-02-29T00:00:00Z")));
        assert_eq!(prev("0 0 * * 7"), Some(ts("2026-11-22T00:00:00Z")));
        assert_eq!(prev("0 0 * * 5-7"), Some(ts("2026-11-22T00:00:00Z")));
        // Both day fields restricted: either matches (the 1st, or Fridays).
        assert_eq!(prev("0 0 1 * FRI"), Some(ts("2026-11-20T00:00:00Z")));
        assert_eq!(
            Schedule::parse("* * * * *")
                .expect("every minute")
                .next(now),
            Some(ts("2026-11-22T12:35:00Z"))
        );
    }

    #[test]
    fn bad_expressions_name_the_field() {
        for (expr, says) in [
            ("61 * * * *", "minute: 61 is outside 0-59"),
            ("0 24 * * *", "hour: 24"),
            ("0 0 0 * *", "day-of-month: 0"),
            ("0 0 * 13 *", "month: 13"),
            ("0 0 * * FUN", "day-of-week: 'FUN'"),
            ("*/0 * * * *", "step '0'"),
            ("0 5-1 * * *", "runs backwards"),
            ("0 0 * *", "has 4 fields"),
            ("0 0 30 2 *", ""),
        ] {
            match Schedule::parse(expr) {
                Err(e) => assert!(e.to_string().contains(says), "{expr}: {e}"),
                // February 30th parses but never fires.
                Ok(s) => {
                    assert!(says.is_empty(), "{expr} parsed");
                    assert_eq!(s.prev(ts("2026-11-22T00:00:00Z")), None);
                }
            }
        }
    }

    #[test]
    fn only_five_fields_and_the_documented_macros_parse() {
        // croner reads all of these; kiln documents none of them.
        for (expr, says) in [
            ("0 0 3 * * 1", "has 6 fields"),        // seconds
            ("0 3 * * 1 2027", "has 6 fields"),     // a year
            ("0 0 3 * * 1 2027", "has 7 fields"),   // both
            ("0 0 L * *", "day-of-month: 'L'"),     // last day
            ("0 0 15W * *", "day-of-month: '15W'"), // nearest weekday
            ("0 0 * * 5L", "day-of-week: '5L'"),    // last Friday
            ("0 0 * * 1#2", "day-of-week: '1#2'"),  // second Monday
            ("0 MON * * *", "hour: 'MON'"),         // names outside their field
            ("0 0 * * JAN", "day-of-week: 'JAN'"),
            ("/5 * * * *", "minute: '' is not"), // croner's sloppy ranges
            ("@reboot", "has 1 fields"),
            ("@every 1h", "has 2 fields"),
        ] {
            let e = Schedule::parse(expr).expect_err(expr);
            assert!(e.to_string().contains(says), "{expr}: {e}");
        }
        // `?` still means `*`, in any field, as it always did here.
        assert_eq!(
            Schedule::parse("0 3 ? * 1").expect("dom ?"),
            Schedule::parse("0 3 * * 1").expect("dom *")
        );
        let now = ts("2026-11-22T12:34:56Z");
        assert_eq!(
            Schedule::parse("?/15 ? * ? *").expect("?").prev(now),
            Some(ts("2026-11-22T12:30:00Z"))
        );
    }
}
