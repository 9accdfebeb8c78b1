//! Heap per command when many connections are busy at once: the tokio client takes its
//! receive and transmit buffers from a small per-thread pool only for as long as a message is
//! being read or written, so a fleet of busy connections does not run the pool dry and
//! allocate (and zero) a 4 KiB buffer for every command. A counting allocator measures what
//! this thread (the runtime's) allocates while 300 connections to fake QEMUs run commands all
//! at once.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use qmp_std::commands::QueryStatus;
use qmp_std::fake::FakeQemu;
use qmp_std::serde_json::json;
use qmp_std::tokio::{Client, ClientBuilder};

/// Bytes allocated by the current thread (the fake QEMUs' threads allocate on their own).
struct Counting;

thread_local! {
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATED.try_with(|n| n.set(n.get() + layout.size()));
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATED.try_with(|n| n.set(n.get() + layout.size()));
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATED.try_with(|n| n.set(n.get() + new_size));
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn allocated() -> usize {
    ALLOCATED.with(Cell::get)
}

const CONNECTIONS: usize = 300;
const ROUNDS: usize = 20;

#[test]
fn busy_connections_do_not_allocate_a_buffer_per_command() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut fakes = Vec::new();
        let mut clients: Vec<Client> = Vec::new();
        for _ in 0..CONNECTIONS {
            let (stream, fake) = FakeQemu::builder()
                .on("query-status", |_| {
                    Ok(json!({"status": "running", "singlestep": false, "running": true}))
                })
                .spawn_unix()
                .expect("fake QEMU");
            stream.set_nonblocking(true).unwrap();
            let stream = tokio::net::UnixStream::from_std(stream).unwrap();
            let client = ClientBuilder::new()
                .command_timeout(Some(Duration::from_secs(20)))
                .handshake_unix(stream)
                .await
                .expect("handshake");
            clients.push(client);
            fakes.push(fake);
        }
        let all_at_once = |rounds: usize| {
            let tasks: Vec<_> = clients
                .iter()
                .cloned()
                .map(|client| {
                    tokio::spawn(async move {
                        for _ in 0..rounds {
                            client.execute(&QueryStatus).await.expect("query-status");
                        }
                    })
                })
                .collect();
            async move {
                for task in tasks {
                    task.await.unwrap();
                }
            }
        };
        // Warm-up: the pool, the runtime's and the clients' tables reach their sizes.
        all_at_once(2).await;
        let before = allocated();
        all_at_once(ROUNDS).await;
        let per_command = (allocated() - before) / (CONNECTIONS * ROUNDS);
        eprintln!("{per_command} bytes allocated per command, {CONNECTIONS} connections busy");
        // What remains per command: the answer's JSON text and the spawned tasks' share
        // (about 90 bytes; 200 with a channel per answer). With the pool run dry, a quarter
        // of the commands allocating a 4 KiB buffer is over this (measured: 1,048 bytes).
        assert!(
            per_command < 512,
            "{per_command} bytes allocated per command: busy connections allocate buffers"
        );
        drop(clients);
        for fake in fakes {
            fake.join();
        }
    });
}
