//! A loopback OTLP/HTTP collector for the tests: accepts `POST /v1/traces` on 127.0.0.1,
//! keeps each request's raw bytes, and decodes them (protobuf, `opentelemetry-proto`'s prost
//! messages) into flat [`Span`]s whose attributes are JSON values.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use serde_json::Value;

/// One request the collector received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub content_type: String,
    pub body: Vec<u8>,
}

/// One span, decoded.
#[derive(Debug, Clone)]
pub struct Span {
    pub name: String,
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    pub parent_span_id: Vec<u8>,
    /// `SpanKind` as its protobuf number (3: client).
    pub kind: i32,
    /// `StatusCode` as its protobuf number (2: error).
    pub status: i32,
    pub attributes: BTreeMap<String, Value>,
    /// Each event's name and attributes.
    pub events: Vec<(String, BTreeMap<String, Value>)>,
    /// The resource's `service.name`.
    pub service: Option<String>,
}

impl Span {
    /// The attribute `key` (panics when absent, naming the span).
    pub fn attr(&self, key: &str) -> &Value {
        self.attributes
            .get(key)
            .unwrap_or_else(|| panic!("span {} has no {key}: {:?}", self.name, self.attributes))
    }

    /// The names of the span's events.
    pub fn event_names(&self) -> Vec<&str> {
        self.events.iter().map(|(n, _)| n.as_str()).collect()
    }
}

/// The running collector.
pub struct Collector {
    /// `http://127.0.0.1:PORT` (the base URL: exporters append `/v1/traces`).
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Collector {
    /// Starts the collector on the current runtime.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let store = Arc::clone(&received);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let store = Arc::clone(&store);
                        async move {
                            let path = req.uri().path().to_owned();
                            let content_type = req
                                .headers()
                                .get("content-type")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            store.lock().unwrap().push(Received {
                                path,
                                content_type,
                                body: body.to_vec(),
                            });
                            // An empty ExportTraceServiceResponse: full success.
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .header("content-type", "application/x-protobuf")
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { url, received }
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Every span received so far, decoded, in the order received.
    pub fn spans(&self) -> Vec<Span> {
        self.requests()
            .iter()
            .flat_map(|r| decode(&r.body))
            .collect()
    }
}

/// The spans of one `ExportTraceServiceRequest`.
pub fn decode(body: &[u8]) -> Vec<Span> {
    let req = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf request");
    let mut out = Vec::new();
    for rs in req.resource_spans {
        let service = rs.resource.as_ref().and_then(|r| {
            attrs(&r.attributes)
                .get("service.name")
                .and_then(|v| v.as_str().map(str::to_owned))
        });
        for ss in rs.scope_spans {
            for s in ss.spans {
                out.push(Span {
                    name: s.name,
                    trace_id: s.trace_id,
                    span_id: s.span_id,
                    parent_span_id: s.parent_span_id,
                    kind: s.kind,
                    status: s.status.map_or(0, |st| st.code),
                    attributes: attrs(&s.attributes),
                    events: s
                        .events
                        .into_iter()
                        .map(|e| (e.name, attrs(&e.attributes)))
                        .collect(),
                    service: service.clone(),
                });
            }
        }
    }
    out
}

fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, Value> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), kv.value.as_ref().map_or(Value::Null, json)))
        .collect()
}

fn json(v: &AnyValue) -> Value {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => Value::from(s.as_str()),
        Some(any_value::Value::BoolValue(b)) => Value::from(*b),
        Some(any_value::Value::IntValue(i)) => Value::from(*i),
        Some(any_value::Value::DoubleValue(d)) => Value::from(*d),
        Some(any_value::Value::ArrayValue(a)) => Value::Array(a.values.iter().map(json).collect()),
        _ => Value::Null,
    }
}
