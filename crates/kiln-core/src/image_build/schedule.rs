//! `spec.schedule`: five-field cron expressions and `@` macros, in UTC.
//!
//! Pure: [`Schedule::prev`] and [`Schedule::next`] find fire times around an
//! instant; `decide` rebuilds when the latest image predates the most recent
//! one.

use jiff::{Timestamp, civil, tz::TimeZone};

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    /// Day-of-month and day-of-week were both restricted: cron fires when
    /// either matches.
    either_day: bool,
}

/// Why a schedule does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ScheduleError(String);

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
/// Far enough to find `0 0 29 2 *` from any day (leap years can be 8 apart).
const SEARCH_DAYS: i32 = 366 * 9;

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

impl Field {
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
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [minute, hour, dom, month, dow] = fields[..] else {
            return Err(ScheduleError(format!(
                "'{text}' has {} fields; cron takes five (minute hour day-of-month month day-of-week) or a macro such as @weekly",
                fields.len()
            )));
        };
        let field = |name, min, max, names| Field {
            name,
            min,
            max,
            names,
        };
        let (minutes, _) = field("minute", 0, 59, &[]).parse(minute)?;
        let (hours, _) = field("hour", 0, 23, &[]).parse(hour)?;
        let (days, dom_star) = field("day-of-month", 1, 31, &[]).parse(dom)?;
        let (months, _) = field("month", 1, 12, &MONTHS).parse(month)?;
        let (weekdays, dow_star) = field("day-of-week", 0, 7, &WEEKDAYS).parse(dow)?;
        // 7 in a range (`5-7`) is Sunday too.
        let weekdays = (weekdays | (weekdays >> 7)) & 0x7f;
        Ok(Schedule {
            minutes,
            hours: hours as u32,
            days: days as u32,
            months: months as u16,
            weekdays: weekdays as u8,
            either_day: !dom_star && !dow_star,
        })
    }

    fn day_matches(&self, d: civil::Date) -> bool {
        if self.months & (1 << d.month()) == 0 {
            return false;
        }
        let dom = self.days & (1 << d.day()) != 0;
        let dow = self.weekdays & (1 << d.weekday().to_sunday_zero_offset()) != 0;
        if self.either_day {
            dom || dow
        } else {
            dom && dow
        }
    }

    /// The latest fire time at or before `at`, if one is within nine years.
    pub fn prev(&self, at: Timestamp) -> Option<Timestamp> {
        let start = at.to_zoned(TimeZone::UTC).datetime();
        let mut day = start.date();
        for i in 0..SEARCH_DAYS {
            if self.day_matches(day) {
                let top_hour = if i == 0 { start.hour() } else { 23 };
                for h in (0..=top_hour).rev() {
                    if self.hours & (1 << h) == 0 {
                        continue;
                    }
                    let top_minute = if i == 0 && h == start.hour() {
                        start.minute()
                    } else {
                        59
                    };
                    if let Some(m) = (0..=top_minute)
                        .rev()
                        .find(|m| self.minutes & (1 << m) != 0)
                    {
                        return utc(day, h, m);
                    }
                }
            }
            day = day.yesterday().ok()?;
        }
        None
    }

    /// The first fire time after `at`, if one is within nine years.
    pub fn next(&self, at: Timestamp) -> Option<Timestamp> {
        let start = at.to_zoned(TimeZone::UTC).datetime();
        let mut day = start.date();
        for i in 0..SEARCH_DAYS {
            if self.day_matches(day) {
                let low_hour = if i == 0 { start.hour() } else { 0 };
                for h in low_hour..=23 {
                    if self.hours & (1 << h) == 0 {
                        continue;
                    }
                    let low_minute = if i == 0 && h == start.hour() {
                        start.minute() + 1
                    } else {
                        0
                    };
                    if let Some(m) = (low_minute..=59).find(|m| self.minutes & (1 << m) != 0) {
                        return utc(day, h, m);
                    }
                }
            }
            day = day.tomorrow().ok()?;
        }
        None
    }
}

fn utc(day: civil::Date, hour: i8, minute: i8) -> Option<Timestamp> {
    day.at(hour, minute, 0, 0)
        .to_zoned(TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp())
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
}
