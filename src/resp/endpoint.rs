//! Where Redis is: `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`, or
//! `rediss://…` for TLS. Pure: the URL is read once, at start, and anything
//! it cannot mean is an error that says which part is wrong.

/// Redis's port when the URL names none.
pub const DEFAULT_PORT: u16 = 6379;

/// A Redis server and how to log in to it.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    /// A host name or an IP address (an IPv6 one without its brackets).
    pub host: String,
    pub port: u16,
    pub db: u32,
    /// The ACL user (none: Redis's `default`).
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("tls", &self.tls)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("db", &self.db)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("rediss://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("redis://") {
            (false, rest)
        } else {
            return Err("expected redis://HOST[:PORT][/DB] or rediss://…".into());
        };
        if rest.contains(['?', '#']) {
            return Err(
                "query parameters and fragments are not supported (a '?' or '#' in a password is written %3F or %23)"
                    .into(),
            );
        }
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => {
                let (user, password) = match info.split_once(':') {
                    Some((user, password)) => (user, Some(password)),
                    None => (info, None),
                };
                let user = percent_decoded(user, "the user name")?;
                // An empty password is none (no AUTH), as `redis://:@host`
                // means in other clients.
                let password = password
                    .filter(|p| !p.is_empty())
                    .map(|p| percent_decoded(p, "the password"))
                    .transpose()?;
                ((!user.is_empty()).then_some(user), password)
            }
        };
        let (host, port) = host_and_port(hostport)?;
        let db = match path.strip_prefix('/').unwrap_or(path) {
            "" => 0,
            db => db
                .parse()
                .map_err(|_| format!("{path:?} is not a database number"))?,
        };
        Ok(Endpoint {
            tls,
            host,
            port,
            db,
            username,
            password,
        })
    }
}

fn host_and_port(hostport: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or("an IPv6 address without its closing ']'")?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("[{host}] is not an IPv6 address"));
        }
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(format!("{after:?} after the IPv6 address")),
            },
        }
    } else {
        match hostport.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        }
    };
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':');
    if host.is_empty() || !host.chars().all(valid) {
        return Err(format!("{host:?} is not a host name or address"));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("{port:?} is not a port"))?,
    };
    Ok((host.to_string(), port))
}

/// `%XX` escapes decoded; the result must be UTF-8 (Redis passwords are
/// text on its command line too).
fn percent_decoded(text: &str, what: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let escape = bytes
                .get(i + 1..i + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| format!("{what} has a broken %-escape"))?;
            out.push(escape);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{what} is not UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_every_part() {
        let plain = Endpoint::parse("redis://127.0.0.1:6380").unwrap();
        assert_eq!(
            (plain.tls, plain.host.as_str(), plain.port, plain.db),
            (false, "127.0.0.1", 6380, 0)
        );
        assert_eq!((plain.username, plain.password), (None, None));

        let full = Endpoint::parse("rediss://app:p%40ss%3Aword@redis.internal/3").unwrap();
        assert!(full.tls);
        assert_eq!(full.host, "redis.internal");
        assert_eq!(full.port, DEFAULT_PORT);
        assert_eq!(full.db, 3);
        assert_eq!(full.username.as_deref(), Some("app"));
        assert_eq!(full.password.as_deref(), Some("p@ss:word"));
        assert!(!format!("{full:?}").contains("p@ss"), "Debug hides it");

        let password_only = Endpoint::parse("redis://:secret@localhost/").unwrap();
        assert_eq!(password_only.username, None);
        assert_eq!(password_only.password.as_deref(), Some("secret"));
        assert_eq!(password_only.db, 0);

        let empty = Endpoint::parse("redis://app:@h").unwrap();
        assert_eq!(
            (empty.username.as_deref(), empty.password),
            (Some("app"), None)
        );

        let v6 = Endpoint::parse("redis://[::1]:7000").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 7000));
        assert_eq!(Endpoint::parse("redis://[::1]").unwrap().port, DEFAULT_PORT);
    }

    #[test]
    fn urls_that_cannot_work_say_why() {
        let cases = [
            ("http://h:1", "expected redis://"),
            ("redis://", "not a host"),
            ("redis://h:0", "not a port"),
            ("redis://h:70000", "not a port"),
            ("redis://h:port", "not a port"),
            ("redis://h/x", "not a database"),
            ("redis://h//1", "not a database"),
            ("redis://h?protocol=resp3", "query"),
            ("redis://[::1", "closing"),
            ("redis://[nope]:1", "not an IPv6"),
            ("redis://h o", "not a host"),
            ("redis://:%zz@h", "broken"),
            ("redis://:%ff@h", "UTF-8"),
        ];
        for (url, expected) in cases {
            let error = Endpoint::parse(url).unwrap_err();
            assert!(error.contains(expected), "{url}: {error}");
        }
    }
}
