//! The TRANSACTION state of a POP3 session (RFC 1939 5) as a core without I/O: the maildrop as
//! the session saw it at login, what is marked deleted, and what another session expunged since
//! ("gone": deleted for good, so that LIST, UIDL, DELE, RETR and RSET agree about it). Each
//! command returns a [`Step`]; the session does the I/O (reading a body, the UPDATE expunge)
//! and writes the replies. Unit-tested below without a socket or a store.

use postern_store::MessageMeta;

use crate::parse::Command;

pub struct Maildrop {
    pub mailbox_id: i64,
    uidvalidity: u32,
    msgs: Vec<MessageMeta>,
    /// Marked with DELE, or gone.
    deleted: Vec<bool>,
    gone: Vec<bool>,
    /// The mailbox's HIGHESTMODSEQ when `gone` was last brought up to date.
    pub modseq: Option<u64>,
}

/// What the session does for a command of the TRANSACTION state.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send these lines.
    Reply(Vec<String>),
    /// Send `-ERR` with this text (and count a protocol error).
    Error(&'static str),
    /// Send message `index` (0-based): all of it, or its header and the first `top` body lines.
    Retrieve { index: usize, top: Option<u32> },
    /// QUIT: remove these UIDs (the UPDATE state), then sign off.
    Update { uids: Vec<u32> },
    /// Not a command of this state (the session answers it or refuses it).
    NotHere,
}

impl Maildrop {
    pub fn new(
        mailbox_id: i64,
        uidvalidity: u32,
        msgs: Vec<MessageMeta>,
        modseq: Option<u64>,
    ) -> Maildrop {
        let n = msgs.len();
        Maildrop {
            mailbox_id,
            uidvalidity,
            msgs,
            deleted: vec![false; n],
            gone: vec![false; n],
            modseq,
        }
    }

    /// How many messages and octets the maildrop had at login.
    pub fn totals(&self) -> (usize, u64) {
        (self.msgs.len(), self.msgs.iter().map(|m| m.size).sum())
    }

    pub fn message(&self, index: usize) -> &MessageMeta {
        &self.msgs[index]
    }

    pub fn is_gone(&self, index: usize) -> bool {
        self.gone[index]
    }

    /// Marks what is no longer in the mailbox (`existing`: its UIDs now, ascending) as gone.
    pub fn mark_gone(&mut self, existing: &[u32]) {
        for (i, m) in self.msgs.iter().enumerate() {
            if existing.binary_search(&m.uid).is_err() {
                self.gone[i] = true;
                self.deleted[i] = true;
            }
        }
    }

    /// The index of message `n`, or the -ERR text for it.
    fn get(&self, n: u32) -> Result<usize, &'static str> {
        let i = (n as usize)
            .checked_sub(1)
            .filter(|&i| i < self.msgs.len())
            .ok_or("No such message")?;
        if self.gone[i] {
            return Err("Message was deleted");
        }
        if self.deleted[i] {
            return Err("Message already deleted");
        }
        Ok(i)
    }

    pub fn command(&mut self, cmd: &Command) -> Step {
        let one = |s: String| Step::Reply(vec![s]);
        match cmd {
            Command::Stat => {
                let (n, size) = self
                    .msgs
                    .iter()
                    .zip(&self.deleted)
                    .filter(|(_, del)| !**del)
                    .fold((0u64, 0u64), |(n, s), (m, _)| (n + 1, s + m.size));
                one(format!("+OK {n} {size}"))
            }
            Command::List(None) | Command::Uidl(None) => {
                let uidl = matches!(cmd, Command::Uidl(_));
                let mut lines = vec![if uidl {
                    "+OK unique-id listing follows".to_owned()
                } else {
                    "+OK scan listing follows".to_owned()
                }];
                for (i, m) in self.msgs.iter().enumerate() {
                    if self.deleted[i] {
                        continue;
                    }
                    lines.push(if uidl {
                        format!("{} {}.{}", i + 1, self.uidvalidity, m.uid)
                    } else {
                        format!("{} {}", i + 1, m.size)
                    });
                }
                lines.push(".".to_owned());
                Step::Reply(lines)
            }
            Command::List(Some(n)) | Command::Uidl(Some(n)) => match self.get(*n) {
                Ok(i) if matches!(cmd, Command::Uidl(_)) => {
                    one(format!("+OK {n} {}.{}", self.uidvalidity, self.msgs[i].uid))
                }
                Ok(i) => one(format!("+OK {n} {}", self.msgs[i].size)),
                Err(why) => Step::Error(why),
            },
            Command::Retr(n) | Command::Top(n, _) => match self.get(*n) {
                Ok(index) => Step::Retrieve {
                    index,
                    top: match cmd {
                        Command::Top(_, lines) => Some(*lines),
                        _ => None,
                    },
                },
                Err(why) => Step::Error(why),
            },
            Command::Dele(n) => match self.get(*n) {
                Ok(i) => {
                    self.deleted[i] = true;
                    one(format!("+OK message {n} deleted"))
                }
                Err(why) => Step::Error(why),
            },
            Command::Rset => {
                // What another session expunged stays deleted.
                self.deleted.clone_from(&self.gone);
                let n = self.gone.iter().filter(|g| !**g).count();
                one(format!("+OK maildrop has {n} messages"))
            }
            Command::Noop => one("+OK".to_owned()),
            // UPDATE state (RFC 1939 6): remove the messages marked deleted (not those gone).
            Command::Quit => Step::Update {
                uids: self
                    .msgs
                    .iter()
                    .enumerate()
                    .filter(|&(i, _)| self.deleted[i] && !self.gone[i])
                    .map(|(_, m)| m.uid)
                    .collect(),
            },
            _ => Step::NotHere,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(uid: u32, size: u64) -> MessageMeta {
        MessageMeta {
            uid,
            flags: vec![],
            modseq: 1,
            size,
            internal_date: 0,
            blob_id: format!("{uid:032x}"),
        }
    }

    fn drop3() -> Maildrop {
        Maildrop::new(
            1,
            7,
            vec![meta(10, 100), meta(11, 200), meta(12, 300)],
            Some(5),
        )
    }

    fn reply(s: Step) -> Vec<String> {
        match s {
            Step::Reply(l) => l,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stat_list_uidl_dele_rset_quit() {
        let mut d = drop3();
        assert_eq!(reply(d.command(&Command::Stat)), ["+OK 3 600"]);
        assert_eq!(reply(d.command(&Command::Uidl(Some(2)))), ["+OK 2 7.11"]);
        assert_eq!(
            reply(d.command(&Command::Dele(2))),
            ["+OK message 2 deleted"]
        );
        assert_eq!(
            d.command(&Command::Dele(2)),
            Step::Error("Message already deleted")
        );
        assert_eq!(
            d.command(&Command::Retr(2)),
            Step::Error("Message already deleted")
        );
        assert_eq!(
            d.command(&Command::List(Some(4))),
            Step::Error("No such message")
        );
        assert_eq!(
            d.command(&Command::List(Some(0))),
            Step::Error("No such message")
        );
        assert_eq!(
            reply(d.command(&Command::List(None))),
            ["+OK scan listing follows", "1 100", "3 300", "."]
        );
        assert_eq!(
            d.command(&Command::Top(3, 2)),
            Step::Retrieve {
                index: 2,
                top: Some(2)
            }
        );
        assert_eq!(
            reply(d.command(&Command::Rset)),
            ["+OK maildrop has 3 messages"]
        );
        d.command(&Command::Dele(1));
        assert_eq!(d.command(&Command::Quit), Step::Update { uids: vec![10] });
        assert_eq!(d.command(&Command::User("x".into())), Step::NotHere);
    }

    #[test]
    fn messages_expunged_elsewhere_stay_deleted() {
        let mut d = drop3();
        d.mark_gone(&[10, 12]);
        assert!(d.is_gone(1));
        for c in [
            Command::Retr(2),
            Command::Dele(2),
            Command::List(Some(2)),
            Command::Uidl(Some(2)),
        ] {
            assert_eq!(d.command(&c), Step::Error("Message was deleted"), "{c:?}");
        }
        assert_eq!(reply(d.command(&Command::Stat)), ["+OK 2 400"]);
        assert_eq!(
            reply(d.command(&Command::Rset)),
            ["+OK maildrop has 2 messages"]
        );
        assert_eq!(
            d.command(&Command::Retr(2)),
            Step::Error("Message was deleted")
        );
        d.command(&Command::Dele(3));
        // the gone message is not expunged again at QUIT
        assert_eq!(d.command(&Command::Quit), Step::Update { uids: vec![12] });
        assert_eq!(d.totals(), (3, 600));
    }
}
