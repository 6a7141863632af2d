//! Numbering: each event gets its id (a UUID v7) and its sequence number on its way to the
//! sinks, in the order the sinks see them. The sequence continues after the last number a
//! durable sink (the spool) holds, so an agent that restarts never numbers an event twice —
//! the collector deduplicates by (agent, seq).

use phiguard_proto::v1;

/// The next number to give.
#[derive(Clone, Debug, Default)]
pub struct Numbering {
    /// The last number given (or found in a durable sink).
    last: u64,
}

impl Numbering {
    /// Numbers on after `last` (0: from 1).
    pub fn after(last: u64) -> Numbering {
        Numbering { last }
    }

    /// Gives `event` its id and the next sequence number.
    pub fn stamp(&mut self, event: &mut v1::Event) {
        self.last += 1;
        event.id = uuid::Uuid::now_v7().to_string();
        event.seq = self.last;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_follow_the_durable_sinks_last_and_ids_are_unique() {
        let mut numbering = Numbering::after(41);
        let (mut a, mut b) = (v1::Event::default(), v1::Event::default());
        numbering.stamp(&mut a);
        numbering.stamp(&mut b);
        assert_eq!((a.seq, b.seq), (42, 43));
        assert!(!a.id.is_empty() && a.id != b.id);
    }
}
