//! Reading netconduit frames from a TCP stream: the header first (its length checked
//! before the body is read), then the body, decoded within the size limit.

use serde_json::Value;
use switchboard_proto::netconduit::{FrameError, HEADER_LEN, Header, decode_payload};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

/// Why reading stopped.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The client closed or the link failed.
    Closed,
    /// The client sent what is not a netconduit frame (the stream is out of step).
    Frame(FrameError),
}

/// Reads one frame: its header and its payload as JSON.
pub(crate) async fn read_frame<R>(r: &mut R, max: usize) -> Result<(Header, Value), ReadError>
where
    R: AsyncRead + Unpin,
{
    let mut head = [0u8; HEADER_LEN];
    r.read_exact(&mut head)
        .await
        .map_err(|_| ReadError::Closed)?;
    let header = Header::parse(&head, max).map_err(ReadError::Frame)?;
    let mut body = vec![0u8; header.length as usize];
    r.read_exact(&mut body)
        .await
        .map_err(|_| ReadError::Closed)?;
    let payload = decode_payload(&header, &body, max).map_err(ReadError::Frame)?;
    Ok((header, payload))
}

/// Reads frames into `frames` until the client closes, a frame is bad (sent on, then
/// the end), or nobody listens.
pub(crate) async fn read_loop<R>(
    mut r: R,
    max: usize,
    frames: mpsc::Sender<Result<(Header, Value), ReadError>>,
) where
    R: AsyncRead + Unpin,
{
    loop {
        let read = read_frame(&mut r, max).await;
        let last = read.is_err();
        if frames.send(read).await.is_err() || last {
            return;
        }
    }
}
