//! Assembling an upload: the chunks of a client-streaming `UploadFiles` call
//! become whole files of lines, or a precise error. Pure and bounded (the
//! bytes held never exceed the session's content limit), so the service
//! feeds it chunks as they arrive and tests drive it directly.

use std::collections::HashSet;

use super::document::split_lines;
use super::error::ReviewError;
use super::ids::Text;
use super::limits::Limits;
use super::validate;
use crate::pb::codereview::FileChunk;

/// What an upload holds so far.
#[derive(Debug)]
pub struct UploadAssembly<'a> {
    limits: &'a Limits,
    session_id: Option<Text>,
    /// (path, bytes), in the order the files began.
    files: Vec<(Text, Vec<u8>)>,
    seen: HashSet<Text>,
    bytes: usize,
}

/// An assembled upload.
#[derive(Debug, PartialEq, Eq)]
pub struct AssembledUpload {
    pub session_id: Text,
    pub files: Vec<(Text, Vec<Text>)>,
    /// The bytes received, as uploaded.
    pub bytes: usize,
}

impl<'a> UploadAssembly<'a> {
    pub fn new(limits: &'a Limits) -> Self {
        UploadAssembly {
            limits,
            session_id: None,
            files: Vec::new(),
            seen: HashSet::new(),
            bytes: 0,
        }
    }

    /// Adds a chunk. Returns the session id when it is the upload's first
    /// (so the caller can check the right to it before going on).
    pub fn add(&mut self, chunk: FileChunk) -> Result<Option<Text>, ReviewError> {
        let limits = self.limits;
        let id = validate::session_id(&chunk.session_id, limits)?;
        let first = match &self.session_id {
            None => {
                self.session_id = Some(id.clone());
                Some(id)
            }
            Some(existing) if *existing != id => {
                return Err(ReviewError::invalid(
                    "all chunks of an upload must name the same session",
                ));
            }
            Some(_) => None,
        };
        validate::upload_path(&chunk.file_path, limits)?;
        self.bytes += chunk.content.len();
        if self.bytes > limits.max_document_bytes {
            return Err(ReviewError::exhausted(format!(
                "upload exceeds the session limit of {} bytes",
                limits.max_document_bytes
            )));
        }
        let continues = self
            .files
            .last()
            .is_some_and(|(path, _)| **path == *chunk.file_path);
        if continues {
            if let Some((_, bytes)) = self.files.last_mut() {
                bytes.extend_from_slice(&chunk.content);
            }
        } else {
            let path = Text::from(chunk.file_path.as_str());
            if !self.seen.insert(path.clone()) {
                return Err(ReviewError::invalid(format!(
                    "chunks of {:?} must be consecutive",
                    chunk.file_path
                )));
            }
            if self.files.len() >= limits.max_files {
                return Err(ReviewError::exhausted(format!(
                    "more than {} files",
                    limits.max_files
                )));
            }
            self.files.push((path, chunk.content.to_vec()));
        }
        Ok(first)
    }

    /// The files as lines, once every chunk is in.
    pub fn finish(self) -> Result<AssembledUpload, ReviewError> {
        let Some(session_id) = self.session_id else {
            return Err(ReviewError::invalid("an upload needs at least one chunk"));
        };
        let mut files = Vec::with_capacity(self.files.len());
        for (path, bytes) in self.files {
            let text = String::from_utf8(bytes)
                .map_err(|_| ReviewError::invalid(format!("{path} is not valid UTF-8 text")))?;
            let lines = split_lines(&text);
            if let Some(long) = lines.iter().find(|l| l.len() > self.limits.max_line_bytes) {
                return Err(ReviewError::invalid(format!(
                    "{path} has a line of {} bytes; the limit is {}",
                    long.len(),
                    self.limits.max_line_bytes
                )));
            }
            files.push((path, lines));
        }
        Ok(AssembledUpload {
            session_id,
            files,
            bytes: self.bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::review::error::ErrorKind;
    use std::sync::Arc;

    fn chunk(session: &str, path: &str, content: &str) -> FileChunk {
        FileChunk {
            session_id: session.into(),
            file_path: path.into(),
            content: content.as_bytes().to_vec().into(),
        }
    }

    #[test]
    fn chunks_of_a_file_join_and_files_split_into_lines() {
        let limits = Limits::default();
        let mut upload = UploadAssembly::new(&limits);
        assert_eq!(
            upload.add(chunk("s", "a", "one\ntw")).unwrap(),
            Some(Arc::from("s"))
        );
        assert_eq!(upload.add(chunk("s", "a", "o\n")).unwrap(), None);
        upload.add(chunk("s", "b", "x")).unwrap();
        let done = upload.finish().unwrap();
        assert_eq!(done.bytes, 9);
        assert_eq!(
            done.files,
            vec![
                (Arc::from("a"), vec![Arc::from("one"), Arc::from("two")]),
                (Arc::from("b"), vec![Arc::from("x")]),
            ]
        );
    }

    #[test]
    fn bad_uploads_get_precise_errors() {
        let limits = Limits {
            max_document_bytes: 10,
            ..Limits::default()
        };
        let kind = |chunks: &[FileChunk]| {
            let mut upload = UploadAssembly::new(&limits);
            for c in chunks {
                if let Err(e) = upload.add(c.clone()) {
                    return e.kind;
                }
            }
            upload
                .finish()
                .err()
                .map(|e| e.kind)
                .unwrap_or(ErrorKind::Aborted)
        };
        assert_eq!(kind(&[]), ErrorKind::InvalidArgument);
        assert_eq!(
            kind(&[chunk("s", "a", "x"), chunk("t", "b", "y")]),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            kind(&[
                chunk("s", "a", "x"),
                chunk("s", "b", "y"),
                chunk("s", "a", "z")
            ]),
            ErrorKind::InvalidArgument
        );
        assert_eq!(kind(&[chunk("s", "a\0", "x")]), ErrorKind::InvalidArgument);
        assert_eq!(
            kind(&[chunk("s", "a", "01234567890")]),
            ErrorKind::ResourceExhausted
        );
        let mut upload = UploadAssembly::new(&limits);
        upload
            .add(FileChunk {
                content: vec![0xff, 0xfe].into(),
                ..chunk("s", "a", "")
            })
            .unwrap();
        assert_eq!(
            upload.finish().unwrap_err().kind,
            ErrorKind::InvalidArgument
        );
    }
}
