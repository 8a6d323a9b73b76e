//! GET requests, for the batch APIs' status polls and file downloads
//! ([`crate::batch`]). Each goes out on a connection of its own: the batch client makes a
//! transport per URL it reads and drops it with the reply, so nothing piles up in the pool.

use std::sync::Arc;

use bytes::Bytes;
use http::Method;

use super::{Reply, Transport, TransportError};

impl Transport {
    /// Sends one `GET` (no body) to this transport's URL with its headers, on a new connection.
    pub(crate) async fn get(self: &Arc<Self>) -> Result<Reply, TransportError> {
        let mut req = self.request(Bytes::new(), &self.h1_uri);
        *req.method_mut() = Method::GET;
        Box::pin(self.send_on_new(req)).await
    }
}
