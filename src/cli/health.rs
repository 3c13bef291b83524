//! `codereview health`: a grpc.health.v1 Check; exit status 0 only when SERVING.

use std::time::Duration;

use argh::FromArgs;

use crate::grpc::client::{CallOptions, Channel, ChannelConfig, Endpoint};
use crate::grpc::health::CHECK;
use crate::pb::health::{
    HealthCheckRequest, HealthCheckResponse, health_check_response::ServingStatus,
};

/// check a server's health (exit 0 only when SERVING)
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "health")]
pub struct HealthArgs {
    /// server address: http://HOST:PORT or https://HOST:PORT (default http://127.0.0.1:50051)
    #[argh(option, default = "String::from(\"http://127.0.0.1:50051\")")]
    pub addr: String,
    /// the service to check (default: the server as a whole)
    #[argh(option, default = "String::new()")]
    pub service: String,
    /// give up after this long (default 5s)
    #[argh(
        option,
        default = "Duration::from_secs(5)",
        from_str_fn(super::parse_duration)
    )]
    pub timeout: Duration,
}

pub async fn run(args: HealthArgs) -> i32 {
    let endpoint = match Endpoint::parse(&args.addr) {
        Ok(endpoint) => endpoint,
        Err(error) => {
            eprintln!("codereview health: {error}");
            return 2;
        }
    };
    let config = ChannelConfig {
        connect_timeout: args.timeout,
        ..ChannelConfig::default()
    };
    let channel = match Channel::connect(&endpoint, &config).await {
        Ok(channel) => channel,
        Err(status) => {
            eprintln!("codereview health: {}", status.message());
            return 1;
        }
    };
    let request = HealthCheckRequest {
        service: args.service,
    };
    match channel
        .unary::<_, HealthCheckResponse>(CHECK, &request, CallOptions::timeout(args.timeout))
        .await
    {
        Ok(response) => {
            let status = ServingStatus::try_from(response.status).unwrap_or(ServingStatus::Unknown);
            println!("{}", status.as_str_name());
            i32::from(status != ServingStatus::Serving)
        }
        Err(status) => {
            eprintln!("codereview health: {status}");
            1
        }
    }
}
