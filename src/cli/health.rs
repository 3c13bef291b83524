//! `codereview health`: a grpc.health.v1 Check; exit status 0 only when SERVING.

use std::time::Duration;

use argh::FromArgs;

use super::connect::ClientError;
use crate::grpc::client::CallOptions;
use crate::grpc::health::CHECK;
use crate::pb::health::{
    HealthCheckRequest, HealthCheckResponse, health_check_response::ServingStatus,
};

crate::cli::connect::client_flags! {
    /// check a server's health (exit 0 only when SERVING)
    #[derive(FromArgs, Debug)]
    #[argh(subcommand, name = "health")]
    #[argh(help_triggers("-h", "--help", "help"))]
    pub struct HealthArgs {
        /// the service to check (default: the server as a whole)
        #[argh(option, default = "String::new()")]
        pub service: String,
        /// give up after this long (default 5s)
        #[argh(option, default = "Duration::from_secs(5)", from_str_fn(super::parse_duration))]
        pub timeout: Duration,
    }
}

/// Prints the status; `Ok(true)` when SERVING.
pub async fn run(args: HealthArgs) -> Result<bool, ClientError> {
    let mut options = args.client_options();
    options.connect_timeout = args.timeout;
    let channel = options.connect().await?;
    let request = HealthCheckRequest {
        service: args.service,
    };
    let response: HealthCheckResponse = channel
        .unary(CHECK, &request, CallOptions::timeout(args.timeout))
        .await?;
    let status = ServingStatus::try_from(response.status).unwrap_or(ServingStatus::Unknown);
    println!("{}", status.as_str_name());
    Ok(status == ServingStatus::Serving)
}
