//! Access-log ingestion: Traefik's OTLP/HTTP log export (`POST /v1/logs`), decoded into
//! per-circuit events. Pure: bytes in, events and rejection reasons out.
//!
//! One record is one finished request (or one closed WebSocket). A record is *applied* when it
//! names a circuit router and the request reached the app (an origin status, or a WebSocket
//! that was upgraded); everything else is *rejected* with a reason, so
//! `received = applied + Σ rejected`.

pub mod otlp;

use prost::Message;
use uuid::Uuid;

use self::otlp::{AnyValue, ExportLogsServiceRequest, LogRecord, Value};

/// Most bytes of one export request we decode.
pub const MAX_EXPORT_BYTES: usize = 8 * 1024 * 1024;

/// What one applied record says.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub circuit: Uuid,
    /// When the request finished (epoch ms, never in the future).
    pub at_ms: i64,
    /// A WebSocket that just closed.
    pub websocket_closed: bool,
    /// Whether it counts as a request: not when it comes from a circuit's WebSocket twin
    /// router (`ap-<id>-ws`), whose upgrade authgate already counted at ForwardAuth.
    pub counted: bool,
}

/// Why a record was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reject {
    /// No `RouterName` (attribute or JSON body).
    NoRouter,
    /// A router that is not a circuit (`ap-setup`, foreign routers).
    NotCircuit,
    /// The request never reached the app (auth denial, allowlist, no replica).
    NotForwarded,
    /// The body is not a log line we can read.
    Malformed,
}

impl Reject {
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::NoRouter => "no_router",
            Reject::NotCircuit => "not_circuit",
            Reject::NotForwarded => "not_forwarded",
            Reject::Malformed => "malformed",
        }
    }
}

/// Why a whole export request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("unsupported Content-Encoding {0:?}")]
    Encoding(String),
    #[error("bad gzip stream or more than {MAX_EXPORT_BYTES} bytes inflated")]
    Gzip,
    #[error("not an OTLP logs export: {0}")]
    Protobuf(#[from] prost::DecodeError),
}

/// Decode an export as it arrived (`identity` or `gzip`, which Traefik's exporter uses),
/// inflating at most [`MAX_EXPORT_BYTES`] (no gzip bombs).
pub fn decode_body(body: &[u8], encoding: Option<&str>) -> Result<Vec<LogRecord>, ExportError> {
    match encoding.map(str::trim) {
        None | Some("") | Some("identity") => Ok(decode(body)?),
        Some(e) if e.eq_ignore_ascii_case("gzip") => {
            use std::io::Read;
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(body)
                .take(MAX_EXPORT_BYTES as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|_| ExportError::Gzip)?;
            if out.len() > MAX_EXPORT_BYTES {
                return Err(ExportError::Gzip);
            }
            Ok(decode(&out)?)
        }
        Some(other) => Err(ExportError::Encoding(other.into())),
    }
}

/// Decode an export request; `Err` when the whole body is not a valid export.
pub fn decode(body: &[u8]) -> Result<Vec<LogRecord>, prost::DecodeError> {
    let req = ExportLogsServiceRequest::decode(body)?;
    Ok(req
        .resource_logs
        .into_iter()
        .flat_map(|r| r.scope_logs)
        .flat_map(|s| s.log_records)
        .collect())
}

fn attr<'a>(r: &'a LogRecord, key: &str) -> Option<&'a Value> {
    r.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

fn as_str(v: &Value) -> Option<String> {
    match v {
        Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::IntValue(i) => Some(*i),
        Value::DoubleValue(d) => Some(*d as i64),
        Value::StringValue(s) => s.parse().ok(),
        Value::BoolValue(_) => None,
    }
}

/// Access-log field of the request's `Sec-WebSocket-Key` (Go's canonical header spelling; the
/// static configuration keeps exactly this header).
pub const WEBSOCKET_KEY_FIELD: &str = "request_Sec-Websocket-Key";

/// The fields we read, from the typed attributes or else from the JSON line in the body.
struct Fields {
    router: Option<String>,
    origin_status: Option<i64>,
    downstream_status: Option<i64>,
    upgrade: Option<String>,
    websocket_key: Option<String>,
}

fn fields(r: &LogRecord) -> Result<Fields, Reject> {
    let from_attrs = Fields {
        router: attr(r, "RouterName").and_then(as_str),
        origin_status: attr(r, "OriginStatus").and_then(as_int),
        downstream_status: attr(r, "DownstreamStatus").and_then(as_int),
        upgrade: attr(r, "request_Upgrade").and_then(as_str),
        websocket_key: attr(r, WEBSOCKET_KEY_FIELD).and_then(as_str),
    };
    if from_attrs.router.is_some() {
        return Ok(from_attrs);
    }
    let Some(Value::StringValue(line)) = r.body.as_ref().and_then(|b| b.value.as_ref()) else {
        return if r.attributes.is_empty() {
            Err(Reject::Malformed)
        } else {
            Err(Reject::NoRouter)
        };
    };
    if line.len() > 64 * 1024 {
        return Err(Reject::Malformed);
    }
    let v: serde_json::Value = serde_json::from_str(line).map_err(|_| Reject::Malformed)?;
    Ok(Fields {
        router: v["RouterName"].as_str().map(str::to_string),
        origin_status: v["OriginStatus"].as_i64(),
        downstream_status: v["DownstreamStatus"].as_i64(),
        upgrade: v["request_Upgrade"].as_str().map(str::to_string),
        websocket_key: v[WEBSOCKET_KEY_FIELD].as_str().map(str::to_string),
    })
}

/// One record, classified: activity to apply (or why not), and the WebSocket upgrade it ends.
#[derive(Debug, Clone, PartialEq)]
pub struct Classified {
    pub event: Result<Event, Reject>,
    /// (circuit, `Sec-WebSocket-Key`) of a request that carried one: whatever its status
    /// (closed socket, upgrade refused by the app or by auth), its record ends it.
    pub websocket_ended: Option<(Uuid, String)>,
}

/// Classify one record at time `now_ms`.
pub fn classify(r: &LogRecord, now_ms: i64) -> Classified {
    match fields(r) {
        Err(e) => Classified {
            event: Err(e),
            websocket_ended: None,
        },
        Ok(mut f) => {
            let circuit = f.router.as_deref().and_then(circuit_of_router);
            let websocket_ended = circuit.zip(f.websocket_key.take());
            Classified {
                event: event_of(f, r, now_ms),
                websocket_ended,
            }
        }
    }
}

/// Classify one record's activity at time `now_ms`.
pub fn event(r: &LogRecord, now_ms: i64) -> Result<Event, Reject> {
    classify(r, now_ms).event
}

/// The circuit of a router name `ap-<id>@etcd` or its WebSocket twin `ap-<id>-ws@etcd` (not
/// its `-auth`/`-ipallow` helpers).
fn circuit_of_router(router: &str) -> Option<Uuid> {
    let name = router.strip_suffix("@etcd")?;
    appproxy_common::names::circuit_of_object(name)
        .filter(|_| !name.contains("-auth") && !name.contains("-ipallow"))
}

fn event_of(f: Fields, r: &LogRecord, now_ms: i64) -> Result<Event, Reject> {
    let router = f.router.ok_or(Reject::NoRouter)?;
    let circuit = circuit_of_router(&router).ok_or(Reject::NotCircuit)?;
    let websocket = f
        .upgrade
        .is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    let downstream = f.downstream_status.unwrap_or(0);
    let origin = f.origin_status.unwrap_or(0);
    // A WebSocket is logged once, at close, with status 0 (or 101); a refused upgrade carries
    // the refusal's status and never reached the app.
    let websocket_closed = websocket && (downstream == 0 || downstream == 101);
    if origin == 0 && !websocket_closed {
        return Err(Reject::NotForwarded);
    }
    let ts = if r.time_unix_nano > 0 {
        r.time_unix_nano
    } else {
        r.observed_time_unix_nano
    };
    let at_ms = if ts == 0 {
        now_ms
    } else {
        ((ts / 1_000_000) as i64).min(now_ms)
    };
    Ok(Event {
        circuit,
        at_ms,
        websocket_closed,
        counted: !router.ends_with("-ws@etcd"),
    })
}

#[cfg(test)]
mod tests {
    use super::{
        otlp::{KeyValue, ResourceLogs, ScopeLogs},
        *,
    };

    fn kv(k: &str, v: Value) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
        }
    }

    fn record(attrs: Vec<KeyValue>, body: Option<&str>, ts_ms: u64) -> LogRecord {
        LogRecord {
            time_unix_nano: ts_ms * 1_000_000,
            observed_time_unix_nano: 0,
            body: body.map(|b| AnyValue {
                value: Some(Value::StringValue(b.into())),
            }),
            attributes: attrs,
        }
    }

    fn export(records: Vec<LogRecord>) -> Vec<u8> {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: records,
                }],
            }],
        }
        .encode_to_vec()
    }

    #[test]
    fn records_classify_by_router_and_origin() {
        let c = Uuid::new_v4();
        let router = |n: &str| kv("RouterName", Value::StringValue(n.into()));
        let ok = record(
            vec![
                router(&format!("ap-{c}@etcd")),
                kv("OriginStatus", Value::IntValue(200)),
            ],
            None,
            1_000,
        );
        let denied = record(
            vec![
                router(&format!("ap-{c}@etcd")),
                kv("OriginStatus", Value::IntValue(0)),
                kv("DownstreamStatus", Value::IntValue(401)),
            ],
            None,
            1_000,
        );
        let ws = record(
            vec![
                router(&format!("ap-{c}@etcd")),
                kv("DownstreamStatus", Value::IntValue(0)),
                kv("request_Upgrade", Value::StringValue("websocket".into())),
            ],
            None,
            1_000,
        );
        let setup = record(vec![router("ap-setup@etcd")], None, 1_000);
        let future = record(
            vec![
                router(&format!("ap-{c}@etcd")),
                kv("OriginStatus", Value::IntValue(204)),
            ],
            None,
            9_999_999,
        );
        let json_only = record(
            vec![],
            Some(&format!(
                r#"{{"RouterName":"ap-{c}@etcd","OriginStatus":200}}"#
            )),
            1_000,
        );
        let garbage = record(vec![], Some("{not json"), 1_000);
        let empty = record(vec![], None, 1_000);
        let bytes = export(vec![
            ok, denied, ws, setup, future, json_only, garbage, empty,
        ]);
        let recs = decode(&bytes).unwrap();
        let got: Vec<Result<Event, Reject>> = recs.iter().map(|r| event(r, 5_000)).collect();
        assert_eq!(
            got[0],
            Ok(Event {
                circuit: c,
                at_ms: 1_000,
                websocket_closed: false,
                counted: true,
            })
        );
        assert_eq!(got[1], Err(Reject::NotForwarded));
        assert_eq!(
            got[2],
            Ok(Event {
                circuit: c,
                at_ms: 1_000,
                websocket_closed: true,
                counted: true,
            })
        );
        assert_eq!(got[3], Err(Reject::NotCircuit));
        assert_eq!(
            got[4].as_ref().unwrap().at_ms,
            5_000,
            "future clamped to now"
        );
        assert_eq!(got[5].as_ref().unwrap().circuit, c);
        assert_eq!(got[6], Err(Reject::Malformed));
        assert_eq!(got[7], Err(Reject::Malformed));
        // The WebSocket twin router of a circuit counted at ForwardAuth: its record ends the
        // socket and counts no request (ForwardAuth counted the upgrade).
        let twin = record(
            vec![
                router(&format!("ap-{c}-ws@etcd")),
                kv("DownstreamStatus", Value::IntValue(0)),
                kv("request_Upgrade", Value::StringValue("websocket".into())),
                kv(WEBSOCKET_KEY_FIELD, Value::StringValue("k1".into())),
            ],
            None,
            1_000,
        );
        let classified = classify(&twin, 5_000);
        assert_eq!(
            classified.event,
            Ok(Event {
                circuit: c,
                at_ms: 1_000,
                websocket_closed: true,
                counted: false,
            })
        );
        assert_eq!(classified.websocket_ended, Some((c, "k1".into())));
    }

    #[test]
    fn any_record_of_a_websocket_request_ends_it() {
        let c = Uuid::new_v4();
        let rec = |status: i64, origin: i64| {
            record(
                vec![
                    kv("RouterName", Value::StringValue(format!("ap-{c}@etcd"))),
                    kv("DownstreamStatus", Value::IntValue(status)),
                    kv("OriginStatus", Value::IntValue(origin)),
                    kv("request_Upgrade", Value::StringValue("websocket".into())),
                    kv(WEBSOCKET_KEY_FIELD, Value::StringValue("k==".into())),
                ],
                None,
                1_000,
            )
        };
        // Closed socket, upgrade refused by the app (200), denied by auth (401, not forwarded).
        for (status, origin) in [(0, 0), (200, 200), (401, 0)] {
            let got = classify(&rec(status, origin), 5_000);
            assert_eq!(got.websocket_ended, Some((c, "k==".into())), "{status}");
        }
        assert!(classify(&rec(401, 0), 5_000).event.is_err());
        // From the JSON body too; a record of another router ends nothing.
        let body = format!(
            r#"{{"RouterName":"ap-{c}@etcd","OriginStatus":200,"{WEBSOCKET_KEY_FIELD}":"j"}}"#
        );
        let got = classify(&record(vec![], Some(&body), 1_000), 5_000);
        assert_eq!(got.websocket_ended, Some((c, "j".into())));
        let other = record(
            vec![
                kv("RouterName", Value::StringValue("ap-setup@etcd".into())),
                kv(WEBSOCKET_KEY_FIELD, Value::StringValue("k==".into())),
            ],
            None,
            1,
        );
        assert_eq!(classify(&other, 5).websocket_ended, None);
    }

    #[test]
    fn gzip_exports_inflate_with_a_bound() {
        use std::io::Write;
        let c = Uuid::new_v4();
        let bytes = export(vec![record(
            vec![kv("RouterName", Value::StringValue(format!("ap-{c}@etcd")))],
            None,
            1,
        )]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&bytes).unwrap();
        let packed = gz.finish().unwrap();
        assert_eq!(decode_body(&packed, Some("gzip")).unwrap().len(), 1);
        assert!(decode_body(&packed, Some("br")).is_err());
        assert!(decode_body(&packed[..packed.len() / 2], Some("gzip")).is_err());
        // A bomb: 9 MiB of zeros inflates past the bound.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&vec![0u8; MAX_EXPORT_BYTES + 1024]).unwrap();
        assert!(matches!(
            decode_body(&gz.finish().unwrap(), Some("gzip")),
            Err(ExportError::Gzip)
        ));
    }

    #[test]
    fn truncated_and_garbage_bodies_fail_to_decode_without_panic() {
        let c = Uuid::new_v4();
        let bytes = export(vec![record(
            vec![kv("RouterName", Value::StringValue(format!("ap-{c}@etcd")))],
            None,
            1,
        )]);
        for cut in 1..bytes.len() {
            let _ = decode(&bytes[..cut]);
        }
        assert!(decode(b"\xff\xff\xff\xff").is_err());
        let mut x: u64 = 42;
        for _ in 0..2_000 {
            let junk: Vec<u8> = (0..64)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            if let Ok(recs) = decode(&junk) {
                for r in &recs {
                    let _ = event(r, 0);
                }
            }
        }
    }
}
