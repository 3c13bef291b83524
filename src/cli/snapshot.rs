//! `codereview snapshot --session S`: prints a session's state (unary call).

use argh::FromArgs;

use super::connect::ClientError;
use super::render::{snapshot_json, snapshot_text};
use crate::grpc::client::CallOptions;
use crate::pb::codereview::{Snapshot, SnapshotRequest};
use crate::pb::paths::GET_SNAPSHOT;

crate::cli::connect::client_flags! {
    /// print a session's snapshot: files, comments, participants, cursors
    #[derive(FromArgs, Debug)]
    #[argh(subcommand, name = "snapshot")]
    #[argh(help_triggers("-h", "--help", "help"))]
    pub struct SnapshotArgs {
        /// the session id
        #[argh(option)]
        pub session: String,
        /// print JSON instead of text
        #[argh(switch)]
        pub json: bool,
    }
}

pub async fn run(args: SnapshotArgs) -> Result<(), ClientError> {
    let channel = args.client_options().connect().await?;
    let request = SnapshotRequest {
        session_id: args.session.clone(),
    };
    let snapshot: Snapshot = channel
        .unary(
            GET_SNAPSHOT,
            &request,
            CallOptions::timeout(std::time::Duration::from_secs(30)),
        )
        .await?;
    if args.json {
        println!("{}", snapshot_json(&snapshot));
    } else {
        print!("{}", snapshot_text(&snapshot));
    }
    Ok(())
}
