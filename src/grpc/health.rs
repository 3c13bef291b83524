//! `grpc.health.v1.Health`: Check and Watch over a table of service statuses.
//! The empty service name stands for the server as a whole. Shutdown flips
//! everything to NOT_SERVING, which watchers see at once.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

use super::server::{Request, Response, ResponseSink, Router};
use super::status::Status;
use crate::pb::health::{
    HealthCheckRequest, HealthCheckResponse, health_check_response::ServingStatus,
};

pub const CHECK: &str = "/grpc.health.v1.Health/Check";
pub const WATCH: &str = "/grpc.health.v1.Health/Watch";

/// Sets service statuses; cheap to clone.
#[derive(Debug, Clone)]
pub struct HealthReporter {
    tx: Arc<watch::Sender<BTreeMap<String, ServingStatus>>>,
}

impl HealthReporter {
    /// A reporter with the overall status ("") SERVING.
    pub fn new() -> HealthReporter {
        let mut table = BTreeMap::new();
        table.insert(String::new(), ServingStatus::Serving);
        HealthReporter {
            tx: Arc::new(watch::channel(table).0),
        }
    }

    pub fn set(&self, service: &str, status: ServingStatus) {
        self.tx.send_modify(|table| {
            table.insert(service.to_owned(), status);
        });
    }

    /// Marks every service NOT_SERVING (shutdown).
    pub fn set_all_not_serving(&self) {
        self.tx.send_modify(|table| {
            for status in table.values_mut() {
                *status = ServingStatus::NotServing;
            }
        });
    }

    pub fn status(&self, service: &str) -> Option<ServingStatus> {
        self.tx.borrow().get(service).copied()
    }

    /// Registers Check and Watch on `router`.
    pub fn register(&self, router: &mut Router) {
        let reporter = self.clone();
        router.unary(CHECK, move |request: Request<HealthCheckRequest>| {
            let status = reporter.status(&request.message().service);
            async move {
                match status {
                    Some(status) => Ok(Response::new(HealthCheckResponse {
                        status: status as i32,
                    })),
                    None => Err(Status::not_found("unknown service")),
                }
            }
        });
        let reporter = self.clone();
        router.server_streaming(
            WATCH,
            move |request: Request<HealthCheckRequest>,
                  mut sink: ResponseSink<HealthCheckResponse>| {
                let mut rx = reporter.tx.subscribe();
                let service = request.into_message().service;
                async move {
                    let mut last = None;
                    loop {
                        let current = rx
                            .borrow_and_update()
                            .get(&service)
                            .copied()
                            .unwrap_or(ServingStatus::ServiceUnknown);
                        if last != Some(current) {
                            sink.send(&HealthCheckResponse {
                                status: current as i32,
                            })
                            .await?;
                            last = Some(current);
                        }
                        tokio::select! {
                            changed = rx.changed() => if changed.is_err() {
                                return Err(Status::unavailable("server shutting down"));
                            },
                            status = sink.cancelled() => return Err(status),
                        }
                    }
                }
            },
        );
    }
}

impl Default for HealthReporter {
    fn default() -> Self {
        HealthReporter::new()
    }
}
