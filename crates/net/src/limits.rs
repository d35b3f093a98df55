//! Connection caps: in total per limiter and per client IP. A permit is held for the life of a
//! connection and gives its slot back when dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TooManyConnections,
    TooManyFromIp,
}

pub struct ConnLimiter {
    total: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    max_per_ip: usize,
}

pub struct ConnPermit {
    _total: OwnedSemaphorePermit,
    ip: IpAddr,
    limiter: Arc<ConnLimiter>,
    /// The protocol this connection counts under in `postern_connections_active`.
    counted: Option<&'static str>,
}

impl ConnPermit {
    /// Counts the connection as an active session of `protocol` until the permit is dropped.
    pub fn count_as(&mut self, protocol: &'static str) {
        if self.counted.is_none() {
            postern_metrics::connection(protocol, 1);
            self.counted = Some(protocol);
        }
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        if let Some(p) = self.counted {
            postern_metrics::connection(p, -1);
        }
        let mut map = self
            .limiter
            .per_ip
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl ConnLimiter {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(ConnLimiter {
            total: Arc::new(Semaphore::new(max_total)),
            per_ip: Mutex::new(HashMap::new()),
            max_per_ip,
        })
    }

    /// Takes a slot for a connection from `ip`, or says which cap refused it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnPermit, Refusal> {
        let total = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::TooManyConnections)?;
        let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return Err(Refusal::TooManyFromIp);
        }
        *n += 1;
        Ok(ConnPermit {
            _total: total,
            ip,
            limiter: self.clone(),
            counted: None,
        })
    }

    pub fn open_connections(&self) -> usize {
        self.per_ip
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_and_release() {
        let l = ConnLimiter::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = l.admit(a).unwrap();
        let _p2 = l.admit(a).unwrap();
        assert_eq!(l.admit(a).err(), Some(Refusal::TooManyFromIp));
        let _p3 = l.admit(b).unwrap();
        assert_eq!(l.admit(b).err(), Some(Refusal::TooManyConnections));
        drop(p1);
        assert_eq!(l.open_connections(), 2);
        l.admit(a).unwrap();
    }
}
