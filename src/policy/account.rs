//! Who pays for a message, and in one canonical spelling.
//!
//! The account is the SASL login when the client authenticated, otherwise — for a client in
//! `internal_networks` — the envelope sender. Never the From: header (a spoofed address must not
//! spend or block someone else's quota). Everything else is inbound and not our business.
//!
//! Canonical form: lower case; a quoted local part loses its quotes when it does not need them;
//! `+tag` folded away when `strip_subaddress`; the domain in its IDNA ASCII form, so
//! `Ælfrida@Bücher.example`, `ælfrida@xn--bcher-kva.example` and `"ælfrida"@bücher.example` are
//! one account. The common case — already canonical ASCII — is recognised without allocating.

use std::borrow::Cow;
use std::net::IpAddr;

use ipnet::IpNet;

/// Whether a transaction is the organisation's own outbound mail.
pub fn is_outbound(auth_login: Option<&[u8]>, client_addr: Option<IpAddr>, internal_networks: &[IpNet]) -> bool {
    auth_login.is_some() || client_addr.is_some_and(|ip| is_internal_client(ip, internal_networks))
}

/// Whether `ip` is inside one of the networks (an IPv4-mapped IPv6 address counts as IPv4).
pub fn is_internal_client(ip: IpAddr, internal_networks: &[IpNet]) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    internal_networks.iter().any(|net| net.contains(&ip))
}

/// The canonical account name of a login or address.
///
/// `None` for the null sender (`<>`) and for input that is not text.
pub fn canonical(raw: &[u8], strip_subaddress: bool) -> Option<Cow<'_, str>> {
    if let Some(text) = already_canonical(raw.trim_ascii(), strip_subaddress) {
        return Some(Cow::Borrowed(text));
    }
    let text = std::str::from_utf8(raw).ok()?.trim();
    if text.is_empty() || text == "<>" {
        return None;
    }
    Some(Cow::Owned(canonicalize_slow(text, strip_subaddress)))
}

/// Byte classes for the one-pass checks of the common case, looked up rather than computed:
/// on these short strings a handful of comparisons per byte cost more than the rest of the
/// decision's bookkeeping.
const CANONICAL_BYTE: u8 = 1;
const PLAIN_DOMAIN_BYTE: u8 = 2;
const UPPER_CASE_BYTE: u8 = 8;
const DOT_ATOM_BYTE: u8 = 4;
/// Single bytes the fast paths look for, accumulated with OR over a whole string.
const AT_BYTE: u8 = 16;
const DOT_BYTE: u8 = 32;
const PLUS_BYTE: u8 = 64;
static BYTE_CLASS: [u8; 256] = byte_classes();

const fn byte_classes() -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let mut class = 0;
        // Lower-case printable ASCII that needs neither unquoting nor unbracketing.
        if b.is_ascii_graphic() && !b.is_ascii_uppercase() && !matches!(b, b'"' | b'<' | b'>' | b'\\' | b'[') {
            class |= CANONICAL_BYTE;
        }
        // A lower-case local part that needs no quotes (RFC 5321 dot-atom: atext and dots).
        if (b.is_ascii_alphanumeric() && !b.is_ascii_uppercase()) || b == b'.' || is_atext_special(b) {
            class |= DOT_ATOM_BYTE;
        }
        // A domain that is its own canonical form up to case: no IDNA, no literal.
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_') {
            class |= PLAIN_DOMAIN_BYTE;
        }
        if b.is_ascii_uppercase() {
            class |= UPPER_CASE_BYTE;
        }
        class |= match b {
            b'@' => AT_BYTE,
            b'.' => DOT_BYTE,
            b'+' => PLUS_BYTE,
            _ => 0,
        };
        table[i] = class;
        i += 1;
    }
    table
}

const fn is_atext_special(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'#'
            | b'$'
            | b'%'
            | b'&'
            | b'\''
            | b'*'
            | b'+'
            | b'-'
            | b'/'
            | b'='
            | b'?'
            | b'^'
            | b'_'
            | b'`'
            | b'{'
            | b'|'
            | b'}'
            | b'~'
    )
}

/// The input itself when it is already canonical: lower-case ASCII, no quotes or brackets, no
/// `+tag` to strip, a local part that needs no quotes, an ASCII domain that does not end in a
/// dot. Nothing to do, nothing to copy.
///
/// It runs for every outbound MAIL FROM, so it makes one pass over the bytes, a table load, an
/// AND and an OR per byte, and looks at dots only in a local part that has some.
fn already_canonical(bytes: &[u8], strip_subaddress: bool) -> Option<&str> {
    let (every, any) = classes(bytes, CANONICAL_BYTE);
    if bytes.is_empty() || every == 0 || bytes.ends_with(b".") || (strip_subaddress && any & PLUS_BYTE != 0) {
        return None;
    }
    if any & AT_BYTE != 0 {
        // An address: the local part a dot-atom (no dot first, last or twice; no `@`, which
        // would need quotes), then a domain.
        let at = bytes.iter().position(|&b| b == b'@').unwrap_or(0);
        let (local, domain) = (&bytes[..at], &bytes[at + 1..]);
        let (local_every, local_any) = classes(local, DOT_ATOM_BYTE);
        let dots_fine = local_any & DOT_BYTE == 0
            || (!local.starts_with(b".") && !local.ends_with(b".") && !local.windows(2).any(|w| w == b".."));
        if local.is_empty() || local_every == 0 || !dots_fine || domain.is_empty() || domain.contains(&b'@') {
            return None;
        }
    }
    debug_assert!(bytes.is_ascii());
    // SAFETY: every byte is of CANONICAL_BYTE's class, printable ASCII, so the bytes are UTF-8.
    Some(unsafe { std::str::from_utf8_unchecked(bytes) })
}

/// The classes every byte of `bytes` has (starting from `wanted`), and those any byte has.
fn classes(bytes: &[u8], wanted: u8) -> (u8, u8) {
    bytes.iter().fold((wanted, 0), |(every, any), &b| {
        let class = BYTE_CLASS[b as usize];
        (every & class, any | class)
    })
}

fn canonicalize_slow(text: &str, strip_subaddress: bool) -> String {
    let text = text.strip_prefix('<').and_then(|t| t.strip_suffix('>')).unwrap_or(text);
    let (local, domain) = split_address(text);
    let mut local = unquote(local);
    // Only an address has sub-addresses: a login without a domain (`svc+backup`) is a user
    // name of its own, as it matches `from` entries literally.
    if strip_subaddress
        && domain.is_some()
        && let Some(plus) = local.find('+')
        && plus > 0
    {
        local.truncate(plus);
    }
    let local = local.to_lowercase();
    match domain {
        None => local,
        Some(domain) => format!("{}@{}", requote(&local), canonical_domain(domain)),
    }
}

/// Splits at the last `@` outside quotes.
fn split_address(text: &str) -> (&str, Option<&str>) {
    let mut in_quotes = false;
    let mut escaped = false;
    let mut split = None;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '@' if !in_quotes => split = Some(i),
            _ => {}
        }
    }
    match split {
        Some(i) => (&text[..i], Some(&text[i + 1..])),
        None => (text, None),
    }
}

/// The content of a quoted local part, escapes resolved; other local parts unchanged.
fn unquote(local: &str) -> String {
    let Some(inner) = local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) else {
        return local.to_owned();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Quotes a local part again only if it needs quoting (RFC 5321 dot-atom otherwise).
fn requote(local: &str) -> Cow<'_, str> {
    let atext = |c: char| c.is_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii();
    let dot_atom = !local.is_empty()
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local.chars().all(|c| c == '.' || atext(c));
    if dot_atom {
        Cow::Borrowed(local)
    } else {
        let escaped: String =
            local.chars().flat_map(|c| if c == '"' || c == '\\' { vec!['\\', c] } else { vec![c] }).collect();
        Cow::Owned(format!("\"{escaped}\""))
    }
}

/// A domain in canonical form: IDNA ASCII lower case; address literals lower-cased as they are.
pub fn canonical_domain(domain: &str) -> String {
    let domain = domain.trim().trim_end_matches('.');
    if domain.starts_with('[') {
        return domain.to_ascii_lowercase();
    }
    idna::domain_to_ascii(domain).unwrap_or_else(|_| domain.to_lowercase())
}

/// The domain of a canonical account, if it has one (a login without `@` has none).
pub fn domain_of(account: &str) -> Option<&str> {
    // Without a quoted local part the last `@` is the separator; only quotes need the walk.
    if !account.contains('"') {
        return account.rsplit_once('@').map(|(_, domain)| domain);
    }
    let (_, domain) = split_address(account);
    domain
}

/// Whether `domain` is `parent` or a subdomain of it (both canonical).
pub fn is_same_or_subdomain(domain: &str, parent: &str) -> bool {
    let (domain, parent) = (domain.as_bytes(), parent.as_bytes());
    domain.len() >= parent.len()
        && domain[domain.len() - parent.len()..].eq_ignore_ascii_case(parent)
        && (domain.len() == parent.len() || domain[domain.len() - parent.len() - 1] == b'.')
}

/// Whether a recipient address is internal: its domain is one of `local_domains` or a
/// subdomain of one. A recipient without a domain (`postmaster`) is local. The local domains
/// are canonical (lower case), as the configuration holds them.
pub fn recipient_is_internal(recipient: &[u8], local_domains: &[String]) -> bool {
    // The common case — a plain ASCII domain — is answered on the bytes: the last `@` is the
    // separator (a domain has none), one backward pass to it classifies the domain's bytes,
    // and a plain comparison with the configured domain does unless the recipient wrote
    // capitals.
    let mut addr = recipient.trim_ascii();
    while let [rest @ .., b'>'] = addr {
        addr = rest;
    }
    let (mut every, mut any, mut domain_len) = (PLAIN_DOMAIN_BYTE, 0, 0);
    for &b in addr.iter().rev() {
        if b == b'@' {
            break;
        }
        let class = BYTE_CLASS[b as usize];
        every &= class;
        any |= class;
        domain_len += 1;
    }
    // No `@` (the pass ran to the start) and a quote in the local part, which may hide an `@`
    // or leave the domain out, are for the general code.
    if let Some(at) = addr.len().checked_sub(domain_len + 1)
        && every != 0
        && !addr[..at].contains(&b'"')
    {
        let mut domain = &addr[at + 1..];
        while let [rest @ .., b'.'] = domain {
            domain = rest;
        }
        let capitals = any & UPPER_CASE_BYTE != 0;
        return local_domains.iter().any(|p| {
            let p = p.as_bytes();
            let Some(start) = domain.len().checked_sub(p.len()) else { return false };
            let suffix = &domain[start..];
            (suffix == p || (capitals && suffix.eq_ignore_ascii_case(p))) && (start == 0 || domain[start - 1] == b'.')
        });
    }
    recipient_is_internal_slow(recipient, local_domains)
}

/// [`recipient_is_internal`] for quoted local parts, non-ASCII and IDNA domains and literals.
fn recipient_is_internal_slow(recipient: &[u8], local_domains: &[String]) -> bool {
    let Ok(text) = std::str::from_utf8(recipient) else {
        return false;
    };
    let text = text.trim().trim_start_matches('<').trim_end_matches('>');
    let Some((_, domain)) = split_address(text).1.map(|d| ((), d)) else {
        return true;
    };
    let domain = domain.trim_end_matches('.');
    if domain.is_ascii() && !domain.contains("xn--") && !domain.starts_with('[') {
        return local_domains.iter().any(|p| is_same_or_subdomain(domain, p));
    }
    let canonical = canonical_domain(domain);
    local_domains.iter().any(|p| is_same_or_subdomain(&canonical, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str) -> Option<String> {
        canonical(s.as_bytes(), true).map(Cow::into_owned)
    }

    #[test]
    fn case_and_subaddress_fold() {
        assert_eq!(canon("Alice@Example.COM").as_deref(), Some("alice@example.com"));
        assert_eq!(canon("alice+news@example.com").as_deref(), Some("alice@example.com"));
        assert_eq!(canonical(b"alice+news@example.com", false).as_deref(), Some("alice+news@example.com"));
        assert_eq!(canon("<bob@example.com>").as_deref(), Some("bob@example.com"));
        assert_eq!(canon("+leading@example.com").as_deref(), Some("+leading@example.com"));
        // A login without a domain keeps its `+`: not a sub-address.
        assert_eq!(canon("svc+backup").as_deref(), Some("svc+backup"));
        assert_eq!(canon("Svc+Backup").as_deref(), Some("svc+backup"));
    }

    #[test]
    fn fast_path_borrows() {
        assert!(matches!(canonical(b"alice@example.com", true), Some(Cow::Borrowed(_))));
        assert!(matches!(canonical(b"Alice@example.com", true), Some(Cow::Owned(_))));
        assert!(matches!(canonical(b" first.o'neil-2@mail.example.com ", true), Some(Cow::Borrowed(_))));
        assert!(matches!(canonical(b"bob+tag@example.com", false), Some(Cow::Borrowed(_))));
        assert!(matches!(canonical(b"login.name.", true), Some(Cow::Owned(_))));
        for needs_work in [
            "bob+tag@example.com",
            "a..b@example.com",
            ".a@example.com",
            "a.@example.com",
            "a@b@example.com",
            "a@example.com.",
            "@example.com",
            "a@",
            "\"a\"@example.com",
            "a@[192.0.2.1]",
        ] {
            assert!(!matches!(canonical(needs_work.as_bytes(), true), Some(Cow::Borrowed(_))), "{needs_work}");
        }
    }

    #[test]
    fn null_sender_and_garbage_have_no_account() {
        assert_eq!(canon(""), None);
        assert_eq!(canon("<>"), None);
        assert_eq!(canonical(b"\xff\xfe@x", true), None);
    }

    #[test]
    fn quoted_local_parts() {
        assert_eq!(canon("\"alice\"@example.com").as_deref(), Some("alice@example.com"));
        assert_eq!(canon("\"John Doe\"@Example.com").as_deref(), Some("\"john doe\"@example.com"));
        assert_eq!(canon("\"a@b\"@example.com").as_deref(), Some("\"a@b\"@example.com"));
        assert_eq!(canon("\"x\\\"y\"@example.com").as_deref(), Some("\"x\\\"y\"@example.com"));
    }

    #[test]
    fn internationalised_domains_compare_in_one_form() {
        let a = canon("Ælfrida@Bücher.example").unwrap();
        let b = canon("ælfrida@xn--bcher-kva.example").unwrap();
        let c = canon("\"ælfrida\"@BÜCHER.example").unwrap();
        assert_eq!(a, "ælfrida@xn--bcher-kva.example");
        assert_eq!(a, b);
        assert_eq!(a, c);
    }

    #[test]
    fn address_literals_and_logins_without_domain() {
        assert_eq!(canon("user@[IPv6:2001:DB8::1]").as_deref(), Some("user@[ipv6:2001:db8::1]"));
        assert_eq!(canon("Bob").as_deref(), Some("bob"));
        assert_eq!(domain_of("bob"), None);
        assert_eq!(domain_of("bob@example.com"), Some("example.com"));
    }

    #[test]
    fn recipient_classes() {
        let local = vec!["example.com".to_owned(), "xn--bcher-kva.example".to_owned()];
        assert!(recipient_is_internal(b"a@example.com", &local));
        assert!(recipient_is_internal(b"a@Sales.Example.com", &local));
        assert!(recipient_is_internal(b"a@b\xc3\xbccher.example", &local));
        assert!(recipient_is_internal(b"postmaster", &local));
        assert!(!recipient_is_internal(b"a@notexample.com", &local));
        assert!(!recipient_is_internal(b"a@example.com.evil.net", &local));
        assert!(!recipient_is_internal(b"a@[192.0.2.1]", &local));
        // The byte-level fast path and the general one agree.
        assert!(recipient_is_internal(b" <a@EXAMPLE.com.> ", &local));
        assert!(recipient_is_internal(b"a@XN--BCHER-KVA.example", &local));
        assert!(recipient_is_internal(b"\"x@y\"@example.com", &local));
        assert!(!recipient_is_internal(b"\"x@example.com\"@example.net", &local));
        assert!(!recipient_is_internal(b"a@exampleXcom", &local));
        assert!(recipient_is_internal(b"<postmaster>", &local));
    }

    proptest::proptest! {
        /// The shortcuts agree with the general code on whatever they accept.
        #[test]
        fn fast_paths_agree_with_the_general_ones(raw in "[ <]{0,2}[a-zA-Z0-9.+_\"\\\\@\\[\\]-]{0,12}(@(example\\.com|Sub\\.EXAMPLE\\.com\\.|ex\\.org|xex\\.org|\\[ex\\.org\\]|[a-zA-Z0-9.-]{0,12}))?[ >]{0,2}") {
            let local = vec!["example.com".to_owned(), "ex.org".to_owned()];
            if let Some(fast) = already_canonical(raw.as_bytes().trim_ascii(), true) {
                proptest::prop_assert_eq!(canonicalize_slow(fast, true), fast);
            }
            proptest::prop_assert_eq!(
                recipient_is_internal(raw.as_bytes(), &local),
                recipient_is_internal_slow(raw.as_bytes(), &local)
            );
        }
    }

    #[test]
    fn direction() {
        let nets: Vec<IpNet> = vec!["127.0.0.0/8".parse().unwrap(), "2001:db8::/32".parse().unwrap()];
        assert!(is_outbound(Some(b"alice"), None, &nets));
        assert!(is_outbound(None, Some("127.0.0.5".parse().unwrap()), &nets));
        assert!(is_outbound(None, Some("::ffff:127.0.0.1".parse().unwrap()), &nets));
        assert!(is_outbound(None, Some("2001:db8::7".parse().unwrap()), &nets));
        assert!(!is_outbound(None, Some("192.0.2.1".parse().unwrap()), &nets));
        assert!(!is_outbound(None, None, &nets));
    }
}
