//! The verdict a scanner in front of us already wrote into the message headers.
//!
//! The MTA hands the milter every header as `(name, value)`, value as received: maybe a
//! leading space, LF- or CRLF-folded continuation lines, any bytes (non-UTF-8 is read
//! lossily). Values are unfolded and decoded with `mail-parser`, then read with small nom
//! parsers.
//!
//! # Built-in rules
//!
//! | header | spam when | ham when | score / required |
//! |---|---|---|---|
//! | `X-Spam-Flag` (SpamAssassin, Amavis) | `YES` | `NO` | — |
//! | `X-Spam-Status` (SpamAssassin, Amavis, rspamd) | `Yes, …` | `No, …` | `score=` (or `hits=`) / `required=` |
//! | `X-Spam` (rspamd) | `Yes` | `No` | — |
//! | `X-Rspamd-Action` | `reject`, `add header`, `rewrite subject`, `discard`, `quarantine` | `no action`, `greylist`, `soft reject` | — |
//! | `X-Spamd-Result` (rspamd) | `default: True [s / r]` | `default: False [s / r]` | s / r |
//! | `X-Forefront-Antispam-Report` (Exchange Online) | `SCL:5` … `SCL:9` | `SCL:-1` … `SCL:4` | SCL / 5 |
//! | `X-Spam-Score` (Amavis, SpamAssassin) | never decides | never decides | recorded as score |
//!
//! `X-Spam-Score` alone decides nothing: the threshold it is compared with lives in the
//! scanner's policy (Amavis `tag2_level`), which we do not know. It fills in the score of a
//! verdict decided by `X-Spam-Flag`. An administrator who wants it to decide adds a rule with
//! `min_score`. `soft reject` is rspamd's temporary refusal (rate limits, greylisting), not a
//! content verdict, so it counts as ham.
//!
//! Administrator rules (`[[verdict.rule]]`) name a header and either a regex `pattern` (the
//! header present and matching: spam; present and not matching: ham) or `min_score` (the first
//! number in the value at or above it: spam; below: ham; no number: no verdict).
//!
//! # Which header wins
//!
//! Of each header only the **last** occurrence counts: a scanner on our side of the connection
//! adds its header after those the client wrote, and a client can write anything. Across
//! headers, **spam wins**: if any present rule says spam the message is spam, so a forged
//! `X-Spam-Flag: NO` cannot hide a real `X-Spam: Yes` from a different scanner. A forged spam
//! header only counts against the forger's own account. The verdict reported (its score and
//! `detail`) is that of the first header, in this order, that agrees with the outcome and
//! carries a score, else the first that agrees: administrator rules, `X-Spam-Status`,
//! `X-Spam-Flag`, `X-Spamd-Result`, `X-Rspamd-Action`, `X-Spam`,
//! `X-Forefront-Antispam-Report`.
//!
//! # Cost
//!
//! [`HeaderJudge::judge`] compares names only (no allocation) and decodes just the relevant
//! headers; a message without scanner headers costs a few comparisons per header.

use mail_parser::HeaderValue;
use mail_parser::parsers::MessageStream;
use nom::branch::alt;
use nom::bytes::complete::{is_not, tag, tag_no_case, take_till, take_while1};
use nom::character::complete::{char, digit1, multispace0, multispace1, one_of, space0};
use nom::combinator::{all_consuming, eof, map, opt, value};
use nom::multi::separated_list0;
use nom::sequence::{delimited, preceded, terminated};
use nom::{IResult, Parser};

use super::{Source, Verdict, clip};
use crate::config::{HeaderTest, VerdictConfig};

/// The built-in headers, in the order they are consulted for the verdict's detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Builtin {
    SpamStatus,
    SpamFlag,
    SpamdResult,
    RspamdAction,
    XSpam,
    Forefront,
    SpamScore,
}

const BUILTINS: [(&str, Builtin); 7] = [
    ("X-Spam-Status", Builtin::SpamStatus),
    ("X-Spam-Flag", Builtin::SpamFlag),
    ("X-Spamd-Result", Builtin::SpamdResult),
    ("X-Rspamd-Action", Builtin::RspamdAction),
    ("X-Spam", Builtin::XSpam),
    ("X-Forefront-Antispam-Report", Builtin::Forefront),
    ("X-Spam-Score", Builtin::SpamScore),
];

#[derive(Debug)]
struct Rule {
    header: String,
    test: HeaderTest,
}

/// The header rules compiled once per configuration.
#[derive(Debug)]
pub struct HeaderJudge {
    rules: Vec<Rule>,
}

/// What one header says.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Finding {
    spam: bool,
    score: Option<f64>,
    required: Option<f64>,
}

impl Finding {
    fn flag(spam: bool) -> Finding {
        Finding { spam, score: None, required: None }
    }
}

impl HeaderJudge {
    /// The built-in rules and the administrator's `[[verdict.rule]]`s (compiled when the
    /// configuration was read).
    pub fn new(config: &VerdictConfig) -> HeaderJudge {
        let rules = config.rules.iter().map(|r| Rule { header: r.header.clone(), test: r.test.clone() }).collect();
        HeaderJudge { rules }
    }

    /// The names of the headers [`HeaderJudge::judge`] reads: what a session keeps of a
    /// message (see [`super::kept`]).
    pub fn names(&self) -> super::HeaderNames {
        super::HeaderNames::new(
            BUILTINS.iter().map(|(name, _)| *name).chain(self.rules.iter().map(|r| r.header.as_str())),
        )
    }

    /// The verdict of the headers, or `None` when no header any rule knows is present (or none
    /// of them has a value a rule can read).
    pub fn judge<'a, I>(&self, headers: I) -> Option<Verdict>
    where
        I: IntoIterator<Item = (&'a [u8], &'a [u8])>,
    {
        let mut builtin: [Option<&'a [u8]>; BUILTINS.len()] = [None; BUILTINS.len()];
        // Allocated only when an administrator rule's header is actually present.
        let mut custom: Vec<Option<&'a [u8]>> = Vec::new();
        for (name, value) in headers {
            // All built-in names start with "X-"; most headers of a message do not.
            if name.len() > 2 && name[..2].eq_ignore_ascii_case(b"x-") {
                for (slot, (known, _)) in builtin.iter_mut().zip(BUILTINS.iter()) {
                    if name.eq_ignore_ascii_case(known.as_bytes()) {
                        *slot = Some(value);
                    }
                }
            }
            for (i, rule) in self.rules.iter().enumerate() {
                if name.eq_ignore_ascii_case(rule.header.as_bytes()) {
                    if custom.is_empty() {
                        custom.resize(self.rules.len(), None);
                    }
                    custom[i] = Some(value);
                }
            }
        }
        if builtin.iter().all(Option::is_none) && custom.is_empty() {
            return None;
        }

        // Spam before ham, then a finding with a score before one without; on a tie the
        // earlier rule.
        let mut best: Option<(Finding, String)> = None;
        for (rule, raw) in self.rules.iter().zip(custom.iter()) {
            let Some(raw) = raw else { continue };
            let text = unfold(raw);
            if let Some(f) = rule.judge(&text) {
                consider(&mut best, f, &rule.header, &text);
            }
        }
        let mut score_header = None;
        for ((name, kind), raw) in BUILTINS.iter().zip(builtin.iter()) {
            // Nothing outranks a spam verdict with a score: skip decoding the rest (this is
            // the common case of a tagged message, and halves its cost).
            if best.as_ref().is_some_and(|(b, _)| rank(b) == (true, true)) {
                break;
            }
            let Some(raw) = raw else { continue };
            let text = unfold(raw);
            let finding = match kind {
                Builtin::SpamStatus => spam_status(&text),
                Builtin::SpamFlag | Builtin::XSpam => yes_no(&text).map(Finding::flag),
                Builtin::SpamdResult => spamd_result(&text),
                Builtin::RspamdAction => super::rspamd::action_is_spam(text.trim()).map(Finding::flag),
                Builtin::Forefront => forefront(&text),
                Builtin::SpamScore => {
                    score_header = first_number(&text);
                    None
                }
            };
            if let Some(f) = finding {
                consider(&mut best, f, name, &text);
            }
        }
        let (mut finding, detail) = best?;
        if finding.score.is_none() {
            finding.score = score_header;
        }
        Some(Verdict {
            spam: finding.spam,
            score: finding.score,
            required: finding.required,
            source: Source::Headers,
            detail,
        })
    }
}

/// Spam before ham, then a finding with a score before one without; on a tie the earlier rule.
fn rank(f: &Finding) -> (bool, bool) {
    (f.spam, f.score.is_some())
}

/// Keeps `finding` if it outranks the best so far.
fn consider(best: &mut Option<(Finding, String)>, finding: Finding, name: &str, text: &str) {
    if best.as_ref().is_none_or(|(b, _)| rank(&finding) > rank(b)) {
        *best = Some((finding, format!("{name}: {}", clip(text))));
    }
}

impl Rule {
    /// What this rule's field says, when its value can be read.
    fn judge(&self, text: &str) -> Option<Finding> {
        match &self.test {
            HeaderTest::Pattern(p) => Some(Finding::flag(p.regex().is_match(text))),
            HeaderTest::MinScore(min) => first_number(text).map(|score| Finding {
                spam: score >= *min,
                score: Some(score),
                required: Some(*min),
            }),
        }
    }
}

/// A header value as one line of text: folding removed, RFC 2047 words decoded, invalid UTF-8
/// replaced. `mail-parser` reads a header up to its terminating newline, which the milter
/// strips, so one is put back.
fn unfold(raw: &[u8]) -> String {
    // Scanner headers are plain ASCII: unfolding them is all mail-parser would do, and doing
    // only that here halves the cost of a tagged message. Anything with an encoded word or
    // that is not UTF-8 goes to mail-parser. (A property test holds the two to the same result.)
    if !raw.windows(2).any(|w| w == b"=?")
        && let Ok(text) = std::str::from_utf8(raw)
    {
        return unfold_plain(text);
    }
    unfold_with_mail_parser(raw)
}

/// RFC 5322 unfolding of a value without encoded words, by mail-parser's rules: each line
/// trimmed of spaces, tabs and CRs, the non-empty ones joined with one space; a line break not
/// followed by a space or tab ends the value.
fn unfold_plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 && !line.starts_with([' ', '\t']) {
            break;
        }
        let line = line.trim_matches([' ', '\t', '\r']);
        if !line.is_empty() {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(line);
        }
    }
    out
}

fn unfold_with_mail_parser(raw: &[u8]) -> String {
    let mut line = Vec::with_capacity(raw.len() + 1);
    line.extend_from_slice(raw);
    line.push(b'\n');
    match MessageStream::new(&line).parse_unstructured() {
        HeaderValue::Text(text) => text.into_owned(),
        _ => String::new(),
    }
}

/// A decimal number: optional sign, digits, optional fraction. No exponent, `inf` or `nan`:
/// scanners never write those, and a forged one must not become an infinite score.
///
/// The digits are taken by length rather than with `recognize`: nom 8.0.0's `digit0` at the
/// very end of a `&str` returns a remainder that is not a subslice of the input, so
/// `recognize((digit1, char('.'), digit0))` yields `"12."` for `"12.3"`.
fn number(input: &str) -> IResult<&str, f64> {
    let (rest, _) = (opt(one_of("+-")), digit1, opt((char('.'), opt(digit1)))).parse(input)?;
    let digits = &input[..input.len() - rest.len()];
    match digits.parse::<f64>() {
        Ok(n) if n.is_finite() => Ok((rest, n)),
        _ => Err(nom::Err::Error(nom::error::Error::new(input, nom::error::ErrorKind::Float))),
    }
}

/// The first number anywhere in `text` (for `min_score` rules and `X-Spam-Score`). A sign
/// counts only when it does not end a word (`X-5` is 5, `score -3.1` is -3.1).
fn first_number(text: &str) -> Option<f64> {
    let mut prev: Option<char> = None;
    for (i, c) in text.char_indices() {
        let starts = c.is_ascii_digit() || ((c == '-' || c == '+') && !prev.is_some_and(|p| p.is_alphanumeric()));
        if starts && let Ok((_, n)) = number(&text[i..]) {
            return Some(n);
        }
        prev = Some(c);
    }
    None
}

/// `YES` / `NO` (also `True` / `False`), nothing else.
fn yes_no(text: &str) -> Option<bool> {
    let parsed: IResult<&str, bool> = all_consuming(delimited(
        multispace0,
        alt((
            value(true, alt((tag_no_case("yes"), tag_no_case("true")))),
            value(false, alt((tag_no_case("no"), tag_no_case("false")))),
        )),
        multispace0,
    ))
    .parse(text);
    parsed.ok().map(|(_, v)| v)
}

/// `Yes, score=12.3 required=5.0 tests=… autolearn=… version=…` (SpamAssassin; Amavis adds
/// `tagged_above=`; SpamAssassin 2 wrote `hits=`; rspamd's variant has no `required=`).
fn spam_status(text: &str) -> Option<Finding> {
    let word = take_while1(|c: char| !c.is_whitespace() && c != '=' && c != ',');
    let item = (word, opt(preceded(char('='), take_till(|c: char| c.is_whitespace() || c == ','))));
    let mut parser = (
        preceded(multispace0, alt((value(true, tag_no_case("yes")), value(false, tag_no_case("no"))))),
        opt(preceded(space0, char(','))),
        multispace0,
        separated_list0((opt(char(',')), multispace1), item),
    );
    let parsed: IResult<&str, _> = parser.parse(text);
    let (_, (spam, _, _, items)) = parsed.ok()?;
    let mut finding = Finding::flag(spam);
    for (key, val) in items {
        let num = || val.and_then(|v| all_consuming(number).parse(v).ok()).map(|(_, n)| n);
        match key {
            "score" | "hits" => finding.score = finding.score.or_else(num),
            "required" => finding.required = finding.required.or_else(num),
            _ => {}
        }
    }
    Some(finding)
}

/// `default: True [12.30 / 15.00]; SYMBOL(1.0)[…]; …` (rspamd; the metric is "default").
fn spamd_result(text: &str) -> Option<Finding> {
    let mut parser = (
        preceded(
            (multispace0, take_while1(|c: char| c.is_alphanumeric() || c == '_'), char(':'), space0),
            alt((value(true, tag_no_case("true")), value(false, tag_no_case("false")))),
        ),
        preceded(space0, char('[')),
        delimited(space0, number, space0),
        preceded(char('/'), delimited(space0, number, space0)),
        char(']'),
    );
    let parsed: IResult<&str, _> = parser.parse(text);
    let (_, (spam, _, score, required, _)) = parsed.ok()?;
    Some(Finding { spam, score: Some(score), required: Some(required) })
}

/// `CIP:192.0.2.1;CTRY:;LANG:en;SCL:6;SRV:;IPV:NLI;SFV:SPM;…` (Exchange Online Protection):
/// spam from SCL 5 up, ham for -1 to 4.
fn forefront(text: &str) -> Option<Finding> {
    let field = (
        delimited(multispace0, take_till(|c: char| c == ':' || c == ';'), multispace0),
        opt(preceded(tag(":"), map(opt(is_not(";")), |v| v.unwrap_or("")))),
    );
    let parsed: IResult<&str, Vec<(&str, Option<&str>)>> =
        terminated(separated_list0(char(';'), field), opt(eof)).parse(text);
    let (_, fields) = parsed.ok()?;
    let (_, scl) = fields.iter().find(|(key, _)| key.eq_ignore_ascii_case("SCL"))?;
    let parsed: IResult<&str, f64> = all_consuming(delimited(space0, number, space0)).parse(scl.unwrap_or(""));
    let (_, scl) = parsed.ok()?;
    if !(-1.0..=9.0).contains(&scl) {
        return None;
    }
    Some(Finding { spam: scl >= 5.0, score: Some(scl), required: Some(5.0) })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{HeaderPattern, HeaderRule};

    fn config(rules: Vec<HeaderRule>) -> VerdictConfig {
        VerdictConfig {
            headers: true,
            spamd: None,
            rspamd: None,
            timeout: Duration::from_secs(10),
            max_scan_bytes: 512 * 1024,
            rules,
        }
    }

    fn judge(headers: &[(&str, &[u8])]) -> Option<Verdict> {
        HeaderJudge::new(&config(vec![])).judge(headers.iter().map(|(n, v)| (n.as_bytes(), *v)))
    }

    fn spam_score(v: &Option<Verdict>) -> (bool, Option<f64>, Option<f64>) {
        let v = v.as_ref().expect("a verdict");
        assert_eq!(v.source, Source::Headers);
        (v.spam, v.score, v.required)
    }

    #[test]
    fn no_scanner_header_no_verdict() {
        assert_eq!(judge(&[]), None);
        assert_eq!(judge(&[("Subject", b" X-Spam-Flag: YES"), ("X-Mailer", b" x")]), None);
        // Present but unreadable: no verdict rather than a guess.
        assert_eq!(judge(&[("X-Spam-Flag", b" maybe")]), None);
        assert_eq!(judge(&[("X-Rspamd-Action", b" frobnicate")]), None);
    }

    #[test]
    fn spamassassin_flag_and_status() {
        let v = judge(&[("X-Spam-Flag", b" YES")]);
        assert_eq!(spam_score(&v), (true, None, None));
        assert_eq!(v.unwrap().detail, "X-Spam-Flag: YES");
        assert_eq!(spam_score(&judge(&[("x-spam-flag", b"no")])), (false, None, None));

        let v = judge(&[(
            "X-Spam-Status",
            b" Yes, score=12.3 required=5.0 tests=BAYES_99,\n\tHTML_MESSAGE autolearn=no\n\tversion=4.0.1",
        )]);
        assert_eq!(spam_score(&v), (true, Some(12.3), Some(5.0)));
        assert_eq!(
            v.unwrap().detail,
            "X-Spam-Status: Yes, score=12.3 required=5.0 tests=BAYES_99, HTML_MESSAGE autolearn=no version=4.0.1"
        );
        let v = judge(&[("X-Spam-Status", b"No, score=-1.9 required=5.0 tests=ALL_TRUSTED")]);
        assert_eq!(spam_score(&v), (false, Some(-1.9), Some(5.0)));
        // SpamAssassin 2 wrote hits=.
        let v = judge(&[("X-Spam-Status", b"Yes, hits=6 required=5")]);
        assert_eq!(spam_score(&v), (true, Some(6.0), Some(5.0)));
    }

    #[test]
    fn status_folded_with_crlf_and_before_the_score() {
        let v = judge(&[("X-Spam-Status", b" Yes,\r\n score=7.5\r\n\trequired=5.0\r\n tests=A")]);
        assert_eq!(spam_score(&v), (true, Some(7.5), Some(5.0)));
    }

    #[test]
    fn amavis_flag_decides_score_is_recorded() {
        let v = judge(&[("X-Spam-Flag", b" YES"), ("X-Spam-Score", b" 8.214"), ("X-Spam-Level", b" ********")]);
        assert_eq!(spam_score(&v), (true, Some(8.214), None));
        // Amavis' status has tagged_above= and tests=[…] with spaces.
        let v = judge(&[(
            "X-Spam-Status",
            b" No, score=2.1 tagged_above=-999 required=6.31\n\ttests=[BAYES_50=0.8, DKIM_SIGNED=0.1] autolearn=ham",
        )]);
        assert_eq!(spam_score(&v), (false, Some(2.1), Some(6.31)));
        // The score alone decides nothing.
        assert_eq!(judge(&[("X-Spam-Score", b" 99")]), None);
    }

    #[test]
    fn rspamd_headers() {
        assert_eq!(spam_score(&judge(&[("X-Spam", b" Yes")])), (true, None, None));
        for (action, spam) in [
            ("reject", true),
            ("add header", true),
            ("rewrite subject", true),
            ("Add_Header", true),
            ("no action", false),
            ("greylist", false),
            ("soft reject", false),
        ] {
            let v = judge(&[("X-Rspamd-Action", format!(" {action}").as_bytes())]);
            assert_eq!(spam_score(&v), (spam, None, None), "{action}");
        }
        let v = judge(&[(
            "X-Spamd-Result",
            b" default: True [16.20 / 15.00];\n\tBAYES_SPAM(5.10)[99.99%];\n\tMIME_GOOD(-0.10)[text/plain]",
        )]);
        assert_eq!(spam_score(&v), (true, Some(16.2), Some(15.0)));
        let v = judge(&[("X-Spamd-Result", b"default: False [-0.10 / 15.00]; MIME_GOOD(-0.10)")]);
        assert_eq!(spam_score(&v), (false, Some(-0.1), Some(15.0)));
        // rspamd's SpamAssassin-style status has no required=.
        let v = judge(&[("X-Spam-Status", b"Yes, score=16.20")]);
        assert_eq!(spam_score(&v), (true, Some(16.2), None));
    }

    #[test]
    fn forefront_scl() {
        let report = |scl: &str| format!(" CIP:192.0.2.1;CTRY:;LANG:en;SCL:{scl};SRV:;IPV:NLI;SFV:NSPM;");
        for (scl, spam) in [("-1", false), ("0", false), ("4", false), ("5", true), ("9", true)] {
            let v = judge(&[("X-Forefront-Antispam-Report", report(scl).as_bytes())]);
            let n: f64 = scl.parse().unwrap();
            assert_eq!(spam_score(&v), (spam, Some(n), Some(5.0)), "SCL {scl}");
        }
        assert_eq!(judge(&[("X-Forefront-Antispam-Report", report("x").as_bytes())]), None);
        assert_eq!(judge(&[("X-Forefront-Antispam-Report", report("12").as_bytes())]), None);
        assert_eq!(judge(&[("X-Forefront-Antispam-Report", b" CIP:1.2.3.4;SFV:SPM")]), None);
        // Folded, SCL on the continuation line.
        let v = judge(&[("X-Forefront-Antispam-Report", b"\n\tCIP:192.0.2.1;CTRY:NL;\n\tSCL:6;SFV:SPM")]);
        assert_eq!(spam_score(&v), (true, Some(6.0), Some(5.0)));
    }

    #[test]
    fn last_occurrence_counts_and_spam_wins() {
        // A client's forged "clean" header, then the scanner's.
        let v = judge(&[
            ("X-Spam-Flag", b" NO"),
            ("X-Spam-Status", b" No, score=-10 required=5"),
            ("X-Spam-Flag", b" YES"),
            ("X-Spam-Status", b" Yes, score=9.1 required=5.0"),
        ]);
        assert_eq!(spam_score(&v), (true, Some(9.1), Some(5.0)));
        // The other way round the last (the scanner's "No") counts.
        let v = judge(&[("X-Spam-Flag", b" YES"), ("X-Spam-Flag", b" NO")]);
        assert_eq!(spam_score(&v), (false, None, None));
        // A forged SpamAssassin "NO" cannot hide rspamd's "Yes".
        let v = judge(&[("X-Spam-Flag", b" NO"), ("X-Spam", b" Yes")]);
        assert_eq!(spam_score(&v), (true, None, None));
        assert_eq!(v.unwrap().detail, "X-Spam: Yes");
    }

    #[test]
    fn non_utf8_values_are_read_lossily() {
        let v = judge(&[("X-Spam-Status", b" Yes, score=7.5 required=5.0\n\ttests=CAF\xc9_R\xc8GLE")]);
        let v = v.unwrap();
        assert_eq!((v.spam, v.score), (true, Some(7.5)));
        assert!(v.detail.contains("CAF\u{fffd}_R\u{fffd}GLE"), "{}", v.detail);
        // RFC 2047 words are decoded too.
        let v = judge(&[("X-Spam-Flag", b" =?us-ascii?q?YES?=")]);
        assert_eq!(spam_score(&v), (true, None, None));
    }

    #[test]
    fn forged_numbers_stay_finite() {
        assert_eq!(
            judge(&[("X-Spam-Status", b"Yes, score=inf required=nan")]).map(|v| (v.score, v.required)),
            Some((None, None))
        );
        let huge = format!("Yes, score={} required=5", "9".repeat(400));
        let v = judge(&[("X-Spam-Status", huge.as_bytes())]).unwrap();
        assert_eq!(v.score, None);
        assert!(v.detail.chars().count() <= "X-Spam-Status: ".len() + super::super::DETAIL_MAX);
    }

    #[test]
    fn administrator_rules() {
        let j = HeaderJudge::new(&config(vec![
            HeaderRule {
                header: "X-Scanner-Verdict".into(),
                test: HeaderTest::Pattern(HeaderPattern::new(r"(?i)verdict=spam").unwrap()),
            },
            HeaderRule { header: "X-Filter-Score".into(), test: HeaderTest::MinScore(7.0) },
        ]));
        let run = |h: &[(&str, &[u8])]| j.judge(h.iter().map(|(n, v)| (n.as_bytes(), *v)));
        let v = run(&[("x-scanner-verdict", b" caf\xe9\n\tverdict=SPAM")]).unwrap();
        assert!(v.spam);
        assert_eq!(v.detail, "X-Scanner-Verdict: caf\u{fffd} verdict=SPAM");
        assert!(!run(&[("X-Scanner-Verdict", b" verdict=ham")]).unwrap().spam);
        let v = run(&[("X-Filter-Score", b" score: 7.5 (high)")]).unwrap();
        assert_eq!((v.spam, v.score, v.required), (true, Some(7.5), Some(7.0)));
        let v = run(&[("X-Filter-Score", b" -3")]).unwrap();
        assert_eq!((v.spam, v.score), (false, Some(-3.0)));
        assert_eq!(run(&[("X-Filter-Score", b" none")]), None);
        // An administrator's ham does not outvote a scanner's spam, and vice versa.
        let v = run(&[("X-Filter-Score", b" 1"), ("X-Spam-Flag", b" YES")]).unwrap();
        assert_eq!(v.detail, "X-Spam-Flag: YES");
        let v = run(&[("X-Filter-Score", b" 9"), ("X-Spam-Flag", b" NO")]).unwrap();
        assert_eq!(v.detail, "X-Filter-Score: 9");
    }

    #[test]
    fn first_number_skips_words_with_dashes() {
        assert_eq!(first_number("X-5"), Some(5.0));
        assert_eq!(first_number("score -3.1"), Some(-3.1));
        assert_eq!(first_number("a-b 2."), Some(2.0));
        assert_eq!(first_number("none"), None);
        assert_eq!(first_number("12.3"), Some(12.3));
        assert_eq!(first_number("12."), Some(12.0));
    }

    proptest::proptest! {
        /// The plain unfolding is mail-parser's, on every value it is used for.
        #[test]
        fn plain_unfolding_agrees_with_mail_parser(value in "[ a\t\r\n=,;:é0-9]{0,40}") {
            proptest::prop_assume!(!value.contains("=?"));
            proptest::prop_assert_eq!(unfold(value.as_bytes()), unfold_with_mail_parser(value.as_bytes()));
        }
    }

    #[test]
    fn plain_unfolding_of_what_scanners_write() {
        assert_eq!(
            unfold(b" Yes, score=12.3 required=5.0 tests=BAYES_99,\n\tHTML_MESSAGE \r\n\t autolearn=no"),
            "Yes, score=12.3 required=5.0 tests=BAYES_99, HTML_MESSAGE autolearn=no"
        );
        assert_eq!(unfold(b"no\nfold"), "no");
        assert_eq!(unfold(b" =?utf-8?q?Yes?="), "Yes", "encoded words still decoded");
    }
}
