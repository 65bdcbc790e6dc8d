//! Topics: named streams many clients follow ("product:1234", "room:42"),
//! next to the original's user-addressed messaging. This file holds the policy
//! hook deciding who may join or publish; memberships live in the engine and
//! requests are handled in hub/topics.rs.

use async_trait::async_trait;
use pubsub_protocol::Topic;

use crate::connection::ClientInfo;

/// Decides who may join and publish to which topic.
#[async_trait]
pub trait TopicPolicy: Send + Sync + 'static {
    async fn may_join(&self, client: &ClientInfo, topic: &Topic) -> bool;
    async fn may_publish(&self, client: &ClientInfo, topic: &Topic) -> bool;
}

/// Any client may join and publish anywhere (the library's default).
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenTopics;

#[async_trait]
impl TopicPolicy for OpenTopics {
    async fn may_join(&self, _client: &ClientInfo, _topic: &Topic) -> bool {
        true
    }
    async fn may_publish(&self, _client: &ClientInfo, _topic: &Topic) -> bool {
        true
    }
}

/// Allows joins and publishes by topic-name pattern: `*` matches any run of
/// characters (`"product:*"`, `"room:*"`, `"*"`). The placeholder `{user}`
/// stands for the client's own user id (`"user:{user}:*"`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicPatterns {
    pub join: Vec<String>,
    pub publish: Vec<String>,
}

impl TopicPatterns {
    /// Everything allowed.
    pub fn open() -> Self {
        Self {
            join: vec!["*".into()],
            publish: vec!["*".into()],
        }
    }

    fn allows(patterns: &[String], client: &ClientInfo, topic: &Topic) -> bool {
        patterns
            .iter()
            .any(|p| glob_match(&p.replace("{user}", client.user.as_str()), topic.as_str()))
    }
}

#[async_trait]
impl TopicPolicy for TopicPatterns {
    async fn may_join(&self, client: &ClientInfo, topic: &Topic) -> bool {
        Self::allows(&self.join, client, topic)
    }
    async fn may_publish(&self, client: &ClientInfo, topic: &Topic) -> bool {
        Self::allows(&self.publish, client, topic)
    }
}

/// `*` matches any (possibly empty) run of characters; everything else is literal.
fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first)
        || !text[first.len()..].ends_with(last)
        || text.len() < first.len() + last.len()
    {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("room:*", "room:42"));
        assert!(!glob_match("room:*", "rooms:42"));
        assert!(glob_match("a*b*c", "a-x-b-y-c"));
        assert!(!glob_match("a*b*c", "a-x-c"));
        assert!(glob_match("exact", "exact"));
        assert!(
            !glob_match("ab*ba", "aba"),
            "prefix and suffix may not overlap"
        );
    }
}
