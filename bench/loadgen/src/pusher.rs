//! What the `sockudo` target (Pusher protocol) needs besides frames: the
//! app credentials the harness starts sockudo with, and the private-channel
//! signature, HMAC-SHA256 of `<socket_id>:<channel>` with the app secret, in
//! hex (RustCrypto's `hmac` and `sha2`; set-up only, never on the hot path).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// bench/harness/bench.py starts sockudo with these (SOCKUDO_DEFAULT_APP_*).
pub const APP_KEY: &str = "bench-key";
pub const APP_SECRET: &str = "bench-secret";

/// The `auth` field of a `pusher:subscribe` to a private channel.
pub fn channel_auth(socket_id: &str, channel: &str) -> String {
    let mac = hmac_sha256(
        APP_SECRET.as_bytes(),
        format!("{socket_id}:{channel}").as_bytes(),
    );
    let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    format!("{APP_KEY}:{hex}")
}

/// The socket id in `pusher:connection_established`, whose `data` is a JSON
/// string: `{"event":"pusher:connection_established","data":"{\"socket_id\":\"123.456\",…}"}`.
pub fn socket_id(payload: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let data = &v["data"];
    let inner: serde_json::Value = match data.as_str() {
        Some(s) => serde_json::from_str(s).ok()?,
        None => data.clone(),
    };
    inner["socket_id"].as_str().map(str::to_owned)
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn hmac_sha256_rfc4231() {
        // RFC 4231 test cases 2 and 6 (a key longer than the block).
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn pusher_docs_example() {
        // Pusher's channel authorization docs: key 278d425bdf160c739803,
        // secret 7ad3773142a6692b25b8, socket 1234.1234, private-foobar.
        let mac = hmac_sha256(b"7ad3773142a6692b25b8", b"1234.1234:private-foobar");
        assert_eq!(
            hex(&mac),
            "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
    }

    #[test]
    fn socket_id_from_connection_established() {
        let p = br#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"123.456\",\"activity_timeout\":120}"}"#;
        assert_eq!(socket_id(p).as_deref(), Some("123.456"));
    }
}
