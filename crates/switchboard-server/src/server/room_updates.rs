//! [`RoomUpdates`]: which rooms sent a `room_update` within the last interval, so that
//! a burst of joins and leaves sends the count once at its start and once at its end
//! instead of once per change to every member (a join storm in a room of N would
//! otherwise send N² counts).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::locks::lock;

/// The rooms inside their `room_update` interval, each with whether its membership
/// changed again since the last count sent.
#[derive(Debug, Default)]
pub(crate) struct RoomUpdates {
    rooms: Mutex<HashMap<String, bool>>,
}

impl RoomUpdates {
    /// A change in `room`: true when its count is to be sent now (the room's first
    /// change in an interval, which starts one); false when an interval is running
    /// and will send the count at its end.
    pub(crate) fn changed(&self, room: &str) -> bool {
        let mut rooms = lock(&self.rooms);
        match rooms.get_mut(room) {
            Some(changed) => {
                *changed = true;
                false
            }
            None => {
                rooms.insert(room.to_owned(), false);
                true
            }
        }
    }

    /// An interval of `room` ended: true when it changed meanwhile (send the count, and
    /// another interval runs), false when it did not (the room's interval is over).
    pub(crate) fn interval_ended(&self, room: &str) -> bool {
        let mut rooms = lock(&self.rooms);
        match rooms.get_mut(room) {
            Some(changed) if *changed => {
                *changed = false;
                true
            }
            _ => {
                rooms.remove(room);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RoomUpdates;

    #[test]
    fn a_burst_sends_at_its_start_and_once_at_its_end() {
        let u = RoomUpdates::default();
        assert!(u.changed("r"), "the first change is sent at once");
        assert!(!u.changed("r"), "the next ones wait for the interval's end");
        assert!(!u.changed("r"));
        assert!(u.changed("other"), "rooms are counted apart");
        assert!(u.interval_ended("r"), "changed meanwhile: send, and go on");
        assert!(
            !u.interval_ended("r"),
            "nothing since: the interval is over"
        );
        assert!(u.changed("r"), "a later change is sent at once again");
        assert!(!u.interval_ended("other"));
    }
}
