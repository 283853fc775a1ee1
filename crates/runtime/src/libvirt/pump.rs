//! Streams pumped by libvirt's event loop, the way `virsh console` does it.
//!
//! A blocking `virStreamRecv` holds its connection's I/O for as long as no
//! data comes, and libvirt's client does not cope with everything else a
//! process does meanwhile: a send on the same stream from another thread
//! was seen to wait forever (`testbed cp` hung), and after a domain ended,
//! calls of other threads waited behind a console's receive (a guest's
//! reboot hung). So no thread ever blocks in a receive here: streams are
//! non-blocking, libvirt's default event loop runs in one thread of the
//! process ([`ensure_event_loop`], before any connection is opened), and
//! each stream's readable data is handed to a sink from a stream event
//! callback ([`pump_from`]).
//!
//! The callback runs on the event loop's thread, so sinks must not block
//! for long: a console's sink appends to a file, an agent's hands the data
//! to a thread of its own.

// The stream callbacks go through libvirt's C API directly: the `virt`
// crate's safe wrapper keeps a pointer to a `Stream` that must never move
// and panics when dropped after the callback was removed.
#![allow(unsafe_code)]

use std::os::raw::{c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use virt::error::Error as VirtError;
use virt::stream::Stream;
use virt::sys;

/// Registers libvirt's default event loop and starts the thread that runs
/// it, once per process. Connections opened before this are not watched by
/// the loop, so every `Connect::open` of this crate comes after it.
pub(super) fn ensure_event_loop() -> Result<(), String> {
    static LOOP: OnceLock<Result<(), String>> = OnceLock::new();
    LOOP.get_or_init(|| {
        virt::event::event_register_default_impl()
            .map_err(|e| format!("cannot register libvirt's event loop: {e}"))?;
        std::thread::Builder::new()
            .name("libvirt-events".into())
            .spawn(|| loop {
                // An error of one iteration (a failed poll) is not the
                // end of the loop; libvirt's own tools go on as well.
                if virt::event::event_run_default_impl().is_err() {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            })
            .map(|_| ())
            .map_err(|e| format!("cannot start libvirt's event thread: {e}"))
    })
    .clone()
}

/// Ends a pumped stream once, from whichever side notices first: removes
/// the event callback and aborts the stream.
#[derive(Clone)]
pub(super) struct Closer {
    stream: Stream,
    closed: Arc<AtomicBool>,
}

impl Closer {
    /// Ends the stream (a second call does nothing). Safe from any thread,
    /// also from inside the stream's callback: libvirt then frees the
    /// callback's state after the callback returned.
    pub(super) fn close(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        // SAFETY: the stream is alive (we hold a reference); removing a
        // callback that is being dispatched is deferred by libvirt, and
        // errors (the stream already ended) mean nothing here.
        unsafe {
            sys::virStreamEventRemoveCallback(self.stream.as_ptr());
            sys::virStreamAbort(self.stream.as_ptr());
        }
    }

    /// Whether the stream was ended.
    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

/// Where a pump puts what it received; `false` ends the pump.
type Sink = Box<dyn FnMut(&[u8]) -> bool + Send>;

/// The state of one stream's callback, owned by libvirt between
/// [`pump_from`] and [`free_pump`].
struct Pump {
    closer: Closer,
    sink: Sink,
    buf: Vec<u8>,
}

impl Pump {
    /// Moves everything the stream has into the sink; whether the stream
    /// goes on.
    fn drain(&mut self, events: c_int) -> bool {
        loop {
            match self.closer.stream.recv(&mut self.buf) {
                // Nothing more for now (the stream is non-blocking).
                Ok(-2) => {
                    let ended =
                        (sys::VIR_STREAM_EVENT_ERROR | sys::VIR_STREAM_EVENT_HANGUP) as c_int;
                    return events & ended == 0;
                }
                Ok(n) if n > 0 => {
                    if !(self.sink)(&self.buf[..n as usize]) {
                        return false;
                    }
                }
                // The end of the stream (0), or its error.
                _ => return false,
            }
        }
    }
}

extern "C" fn on_event(_stream: sys::virStreamPtr, events: c_int, opaque: *mut c_void) {
    // SAFETY: `opaque` is the `Box<Pump>` of `pump_from`, freed only by
    // `free_pump`, which libvirt never runs while this callback runs.
    let pump = unsafe { &mut *(opaque as *mut Pump) };
    if pump.closer.is_closed() {
        return;
    }
    let goes_on = catch_unwind(AssertUnwindSafe(|| pump.drain(events))).unwrap_or(false);
    if !goes_on {
        pump.closer.close();
    }
}

extern "C" fn free_pump(opaque: *mut c_void) {
    // SAFETY: libvirt calls this once, with the pointer `pump_from` gave.
    drop(unsafe { Box::from_raw(opaque as *mut Pump) });
}

/// Creates a non-blocking stream on `conn` (before it is opened on a
/// console or a channel).
pub(super) fn nonblocking_stream(conn: &virt::connect::Connect) -> Result<Stream, VirtError> {
    Stream::new(conn, sys::VIR_STREAM_NONBLOCK)
}

/// Hands everything `stream` receives to `sink`, from the event loop,
/// until the stream ends, the sink returns `false`, or the returned
/// [`Closer`] closes it. The sink is dropped when the pump ends.
pub(super) fn pump_from(
    stream: &Stream,
    buf_size: usize,
    sink: impl FnMut(&[u8]) -> bool + Send + 'static,
) -> Result<Closer, VirtError> {
    let closer = Closer {
        stream: stream.clone(),
        closed: Arc::new(AtomicBool::new(false)),
    };
    let pump = Box::into_raw(Box::new(Pump {
        closer: closer.clone(),
        sink: Box::new(sink),
        buf: vec![0u8; buf_size],
    }));
    let events = (sys::VIR_STREAM_EVENT_READABLE
        | sys::VIR_STREAM_EVENT_ERROR
        | sys::VIR_STREAM_EVENT_HANGUP) as c_int;
    // SAFETY: the stream is alive; on success libvirt owns `pump` until it
    // calls `free_pump`; on failure it never saw it and it is freed here.
    let ret = unsafe {
        sys::virStreamEventAddCallback(
            stream.as_ptr(),
            events,
            Some(on_event),
            pump as *mut c_void,
            Some(free_pump),
        )
    };
    if ret < 0 {
        drop(unsafe { Box::from_raw(pump) });
        return Err(VirtError::last_error());
    }
    Ok(closer)
}
