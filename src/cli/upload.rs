//! `codereview upload --session S FILES...`: the author seeds a session with
//! the files under review (client streaming, each file in chunks).

use std::path::PathBuf;

use argh::FromArgs;
use bytes::Bytes;

use super::connect::ClientError;
use crate::grpc::Status;
use crate::grpc::client::{CallOptions, ClientCall};
use crate::pb::codereview::{FileChunk, UploadSummary};
use crate::pb::paths::UPLOAD_FILES;

/// Chunk size: well below the 4 MiB message limit, large enough to be cheap.
const CHUNK: usize = 64 * 1024;

crate::cli::connect::client_flags! {
    /// upload files under review into a session (the author seeds it)
    #[derive(FromArgs, Debug)]
    #[argh(subcommand, name = "upload")]
    #[argh(help_triggers("-h", "--help", "help"))]
    pub struct UploadArgs {
        /// the session id
        #[argh(option)]
        pub session: String,
        /// the name a file gets in the session (default: its path as given);
        /// repeat once per file, in order
        #[argh(option)]
        pub name: Vec<String>,
        /// files to upload
        #[argh(positional)]
        pub files: Vec<PathBuf>,
    }
}

pub async fn run(args: UploadArgs) -> Result<(), ClientError> {
    if args.files.is_empty() {
        return Err(ClientError::setup("no files given"));
    }
    if !args.name.is_empty() && args.name.len() != args.files.len() {
        return Err(ClientError::setup("give one --name per file, or none"));
    }
    let mut contents = Vec::new();
    for (i, path) in args.files.iter().enumerate() {
        let bytes = std::fs::read(path)
            .map_err(|e| ClientError::setup(format!("cannot read {}: {e}", path.display())))?;
        let name = args
            .name
            .get(i)
            .cloned()
            .unwrap_or_else(|| path.display().to_string());
        contents.push((name, Bytes::from(bytes)));
    }
    let channel = args.client_options().connect().await?;
    let mut call = channel.start(UPLOAD_FILES, CallOptions::default()).await?;
    if let Err(send_error) = send_files(&mut call, &args.session, contents).await {
        // The server may have refused the upload; its status says why.
        return Err(call
            .message::<UploadSummary>()
            .await
            .err()
            .unwrap_or(send_error)
            .into());
    }
    call.close_send();
    let summary = call
        .message::<UploadSummary>()
        .await?
        .ok_or_else(|| ClientError::runtime("the server sent no summary"))?;
    println!(
        "uploaded {} files, {} lines, {} bytes to session {} (version {}, sequence {})",
        summary.files,
        summary.lines,
        summary.bytes,
        args.session,
        summary.version,
        summary.sequence
    );
    Ok(())
}

async fn send_files(
    call: &mut ClientCall,
    session: &str,
    contents: Vec<(String, Bytes)>,
) -> Result<(), Status> {
    for (name, bytes) in contents {
        let mut offset = 0;
        loop {
            let end = (offset + CHUNK).min(bytes.len());
            call.queue(&FileChunk {
                session_id: session.to_owned(),
                file_path: name.clone(),
                content: bytes.slice(offset..end),
            });
            call.flush().await?;
            offset = end;
            if offset >= bytes.len() {
                break;
            }
        }
    }
    Ok(())
}
