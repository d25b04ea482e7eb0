//! A session store wrapper that times every call and counts failures, so
//! Redis trouble shows on a dashboard before it shows as 503s.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use crate::metrics::Metrics;
use crate::session::{Online, Route, SessionStore, StoreError};

pub(crate) struct TimedStore {
    inner: Arc<dyn SessionStore>,
    metrics: Arc<Metrics>,
}

impl TimedStore {
    pub(crate) fn new(inner: Arc<dyn SessionStore>, metrics: Arc<Metrics>) -> Self {
        TimedStore { inner, metrics }
    }

    async fn time<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = call.await;
        self.metrics
            .store_call(op, started.elapsed().as_secs_f64(), result.is_ok());
        result
    }
}

#[async_trait]
impl SessionStore for TimedStore {
    async fn connect(&self, mid: i64, key: &str, server: &str) -> Result<(), StoreError> {
        self.time("connect", self.inner.connect(mid, key, server))
            .await
    }

    async fn disconnect(&self, mid: i64, key: &str, server: &str) -> Result<bool, StoreError> {
        self.time("disconnect", self.inner.disconnect(mid, key, server))
            .await
    }

    async fn renew(&self, mid: i64, key: &str, server: &str) -> Result<(), StoreError> {
        self.time("renew", self.inner.renew(mid, key, server)).await
    }

    async fn renew_many(&self, server: &str, sessions: &[(i64, String)]) -> Result<(), StoreError> {
        self.time("renew_many", self.inner.renew_many(server, sessions))
            .await
    }

    async fn epoch(&self) -> Result<String, StoreError> {
        self.time("epoch", self.inner.epoch()).await
    }

    async fn servers_of_keys(&self, keys: &[String]) -> Result<Vec<(String, String)>, StoreError> {
        self.time("servers_of_keys", self.inner.servers_of_keys(keys))
            .await
    }

    async fn keys_of_mids(&self, mids: &[i64]) -> Result<Vec<Route>, StoreError> {
        self.time("keys_of_mids", self.inner.keys_of_mids(mids))
            .await
    }

    async fn report_online(
        &self,
        server: &str,
        rooms: HashMap<String, i32>,
    ) -> Result<(), StoreError> {
        self.time("report_online", self.inner.report_online(server, rooms))
            .await
    }

    async fn online(&self) -> Result<Online, StoreError> {
        self.time("online", self.inner.online()).await
    }

    async fn route_rooms(&self, server: &str, rooms: &[String]) -> Result<(), StoreError> {
        self.time("route_rooms", self.inner.route_rooms(server, rooms))
            .await
    }

    async fn update_online(
        &self,
        server: &str,
        rooms: HashMap<String, i32>,
    ) -> Result<(), StoreError> {
        self.time("update_online", self.inner.update_online(server, rooms))
            .await
    }

    async fn room_totals(&self, rooms: &[String]) -> Result<HashMap<String, i32>, StoreError> {
        self.time("room_totals", self.inner.room_totals(rooms))
            .await
    }

    async fn room_servers(&self, room: &str) -> Result<Vec<String>, StoreError> {
        self.time("room_servers", self.inner.room_servers(room))
            .await
    }
}
