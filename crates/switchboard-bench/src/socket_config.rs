//! The WebSocket settings of the load clients and of the floor server: 4 KiB buffers,
//! as switchboard's own.

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub(crate) fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(4096)
        .max_message_size(Some(1 << 20))
}
