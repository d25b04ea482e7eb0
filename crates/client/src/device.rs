//! A device that never misses a message: it reconnects when its
//! connection ends, resumes from the last message it handed to the app
//! (op 18), acknowledges what the app handled (op 20), heartbeats, and hands
//! the app every numbered message once and in order (see [`Sequencer`]).

use std::time::Duration;

use bytes::Bytes;
use imcloud_protocol::{CloseReason, Op, Packet};
use tokio::time::{Instant, sleep, sleep_until};

use crate::sequencer::{Event, Resumed, Sequencer};
use crate::{Client, ClientError};

/// How long an early message waits for a missing one before the device
/// resumes from the gap.
pub const DEFAULT_GAP_WAIT: Duration = Duration::from_millis(500);
/// How long a handled message may wait for its ack: acks are cumulative, so
/// one covers everything handled meanwhile (a burst costs one ack, not one
/// per message), and the server's `ack_timeout` is tens of seconds.
pub const ACK_DELAY: Duration = Duration::from_millis(200);
/// The longest pause between two reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Opens a connection to some cloud node (the device does the rest).
pub trait Connector: Send {
    /// A new connection, not yet authenticated.
    fn connect(&mut self) -> impl Future<Output = Result<Client, ClientError>> + Send;
}

impl<F, Fut> Connector for F
where
    F: FnMut() -> Fut + Send,
    Fut: Future<Output = Result<Client, ClientError>> + Send,
{
    fn connect(&mut self) -> impl Future<Output = Result<Client, ClientError>> + Send {
        self()
    }
}

/// One user's device.
pub struct Device<C> {
    connector: C,
    token: Bytes,
    client: Option<Client>,
    sequencer: Sequencer,
    /// The message returned by the last `next`, handled once `next` is
    /// called again.
    handing: u64,
    /// Handled by the app: acknowledged at the next quiet moment.
    handled: u64,
    /// When the handled messages not acknowledged yet are.
    ack_due: Option<Instant>,
    heartbeat: Duration,
    next_heartbeat: Instant,
    connections: u64,
    /// Rooms joined with [`Device::join`], joined again on every reconnect.
    rooms: Vec<String>,
    /// Rooms a reconnect could not join again, told by the next `next`s.
    lost_rooms: Vec<ClientError>,
}

impl<C: Connector> Device<C> {
    /// A device that signs in with `token` wherever `connector` connects,
    /// and has handed the app everything up to `last` (0: nothing yet).
    pub fn new(connector: C, token: impl Into<Bytes>, last: u64) -> Self {
        Device {
            connector,
            token: token.into(),
            client: None,
            sequencer: Sequencer::new(last, DEFAULT_GAP_WAIT),
            handing: 0,
            handled: last,
            ack_due: None,
            heartbeat: Duration::from_secs(30),
            next_heartbeat: Instant::now(),
            connections: 0,
            rooms: Vec::new(),
            lost_rooms: Vec::new(),
        }
    }

    /// The last sequence number handed to the app.
    pub fn last(&self) -> u64 {
        self.sequencer.last()
    }

    /// Connections made so far (each one after the first is a reconnect).
    pub fn connections(&self) -> u64 {
        self.connections
    }

    /// Connects now, if not connected: once this returns, pushes to the
    /// user reach this device. (`next` connects by itself otherwise.)
    pub async fn online(&mut self) -> Result<(), ClientError> {
        if self.client.is_none() {
            self.open().await?;
        }
        Ok(())
    }

    /// Joins `room` (connecting first if need be), and joins it again after
    /// every reconnect until [`Device::leave`].
    pub async fn join(&mut self, room: &str) -> Result<(), ClientError> {
        self.online().await?;
        if let Some(client) = &mut self.client {
            client.join(room).await?;
        }
        if !self.rooms.iter().any(|joined| joined == room) {
            self.rooms.push(room.to_owned());
        }
        Ok(())
    }

    /// Leaves `room`, here and on later reconnects.
    pub async fn leave(&mut self, room: &str) -> Result<(), ClientError> {
        self.rooms.retain(|joined| joined != room);
        if let Some(client) = &mut self.client {
            client.leave(room).await?;
        }
        Ok(())
    }

    /// Drops the connection as a network would (no goodbye); the next call
    /// to [`Device::next`] reconnects and resumes.
    pub fn cut(&mut self) {
        self.client = None;
    }

    /// The next event for the app. Calling it again means the app handled
    /// the previous one: that is when it is acknowledged. Fails only when
    /// the token is refused; every other failure is a reconnect.
    ///
    /// A room a reconnect could not join again (the server refused it
    /// this time) is dropped from the device's rooms and returned once as
    /// [`ClientError::Room`]; the device goes on.
    pub async fn next(&mut self) -> Result<Event, ClientError> {
        if self.handing > self.handled {
            self.handled = self.handing;
            self.ack_due
                .get_or_insert_with(|| Instant::now() + ACK_DELAY);
        }
        let mut backoff = Duration::from_millis(20);
        loop {
            if !self.lost_rooms.is_empty() {
                return Err(self.lost_rooms.remove(0));
            }
            if let Some(event) = self.sequencer.pop() {
                if let Event::Message(packet) = &event
                    && packet.seq > 0
                {
                    self.handing = u64::from(packet.seq);
                }
                return Ok(event);
            }
            // Taken out while served: a `next` dropped midway (a select
            // elsewhere) costs a reconnect and a resume, never a message.
            let Some(mut client) = self.client.take() else {
                match self.open().await {
                    Ok(()) => backoff = Duration::from_millis(20),
                    Err(err) if refused(&err) => return Err(err),
                    Err(_) => {
                        sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
                continue;
            };
            match self.serve(&mut client).await {
                Ok(()) => self.client = Some(client),
                Err(err) if refused(&err) => return Err(err),
                // Reconnect and resume.
                Err(_) => {}
            }
        }
    }

    /// Connects, authenticates and resumes from the last message handed.
    async fn open(&mut self) -> Result<(), ClientError> {
        let mut client = self.connector.connect().await?;
        let me = client.auth(self.token.clone()).await?;
        self.connections += 1;
        self.heartbeat = Duration::from_secs(me.heartbeat.max(1));
        self.next_heartbeat = Instant::now() + self.heartbeat;
        client.resume(self.sequencer.last()).await?;
        self.sequencer.resuming();
        for room in self.rooms.clone() {
            match client.join(&room).await {
                Ok(()) => {}
                Err(refused @ ClientError::Room { .. }) => {
                    self.rooms.retain(|joined| *joined != room);
                    self.lost_rooms.push(refused);
                }
                Err(err) => return Err(err),
            }
        }
        self.client = Some(client);
        Ok(())
    }

    /// Waits for one thing: a packet, the heartbeat, the ack of what was
    /// handled, or a gap that waited too long.
    async fn serve(&mut self, client: &mut Client) -> Result<(), ClientError> {
        let gap = self.sequencer.resume_due().map(Instant::from_std);
        let now = std::time::Instant::now;
        tokio::select! {
            packet = client.recv() => {
                let packet = packet?;
                match packet.op {
                    Op::DISCONNECT => return Err(crate::close_error(&packet)),
                    Op::RESUMED => {
                        let resumed: Resumed = serde_json::from_slice(&packet.body)
                            .map_err(|err| ClientError::Unexpected(format!("op 19: {err}")))?;
                        self.sequencer.resumed(resumed, now());
                    }
                    op if op.is_business() => self.sequencer.push(packet, now()),
                    // Replies to heartbeats and the like.
                    _ => {}
                }
            }
            () = sleep_until(self.next_heartbeat) => {
                client.send(Packet::new(Op::HEARTBEAT, 0, Bytes::new())).await?;
                self.next_heartbeat = Instant::now() + self.heartbeat;
            }
            () = sleep_until(self.ack_due.unwrap_or_else(Instant::now)), if self.ack_due.is_some() => {
                client.ack(self.handled).await?;
                self.ack_due = None;
            }
            () = sleep_until(gap.unwrap_or_else(Instant::now)), if gap.is_some() => {
                client.resume(self.sequencer.last()).await?;
                self.sequencer.resuming();
            }
        }
        Ok(())
    }
}

/// The token was refused: reconnecting would not help.
fn refused(err: &ClientError) -> bool {
    matches!(err, ClientError::Closed(close) if close.close_reason() == Some(CloseReason::AuthFailed))
}
