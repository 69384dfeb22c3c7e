//! WASI preview 1 with every call timed at the boundary: each call the guest makes becomes a
//! host call in the recorder (a child span of the calling function), with its file descriptor
//! and the bytes it moved where the call says. No change to the module is needed.
//!
//! Each function is defined as a wrapper that records the call and then runs wasmtime-wasi's
//! own implementation of it (the functions its `add_to_linker` installs), so behaviour is that
//! of wasmtime-wasi exactly. A test checks that every function is wrapped with the type
//! wasmtime-wasi gives it.

use wasmtime::{AsContextMut, Caller, Extern, Linker, Result};
use wasmtime_wasi::p1::wasi_snapshot_preview1 as p1;
use wasmtime_wasi::p1::wasi_snapshot_preview1::WasiSnapshotPreview1 as _;

use super::RunState;

/// The WASI module name.
const WASI: &str = "wasi_snapshot_preview1";

/// What a host call's span says beyond its time.
#[derive(Clone, Copy)]
enum Detail {
    /// Nothing.
    None,
    /// The file descriptor (the first argument).
    Fd,
    /// The file descriptor and the bytes moved (a `u32` the call stores at its last argument).
    FdAndBytes,
}

/// Runs one WASI call of the guest through wasmtime-wasi's implementation, as its own
/// `add_to_linker` would, with the guest's memory and the store's WASI context.
macro_rules! call_wasi {
    ($caller:ident, $name:ident, async ($($arg:ident),*)) => {
        call_wasi!(@body $caller, $name, ($($arg),*), .await)
    };
    ($caller:ident, $name:ident, sync ($($arg:ident),*)) => {
        call_wasi!(@body $caller, $name, ($($arg),*), )
    };
    (@body $caller:ident, $name:ident, ($($arg:ident),*), $($await:tt)*) => {{
        let fuel = $caller.as_context_mut().hostcall_fuel();
        let Some(Extern::Memory(memory)) = $caller.get_export("memory") else {
            wasmtime::bail!("missing required memory export");
        };
        let (data, state) = memory.data_and_store_mut(&mut $caller);
        let wasi = &mut state.wasi;
        wasi.set_hostcall_fuel(fuel);
        let mut guest = wiggle::GuestMemory::Unshared(data);
        p1::$name(wasi, &mut guest $(, $arg)*) $($await)*
    }};
}

/// Defines every WASI preview 1 function, traced, and lists their names in host-call order.
macro_rules! traced_wasi {
    ($( $mode:ident $name:ident ( $($arg:ident : $ty:ty),* ) $(-> $ret:ty)? , $detail:expr ; )*) => {
        /// The WASI preview 1 functions, in the order of their host-call ids.
        pub const WASI_FUNCTIONS: &[&str] = &[$(stringify!($name)),*];

        /// Defines the traced WASI preview 1 functions in `linker`.
        ///
        /// # Errors
        ///
        /// If a name is already defined.
        pub fn add_traced_wasi(linker: &mut Linker<RunState>) -> Result<()> {
            let mut index = 0u32;
            $(
                let id = index;
                index += 1;
                linker.func_wrap_async(
                    WASI,
                    stringify!($name),
                    move |mut caller: Caller<'_, RunState>, ($($arg,)*): ($($ty,)*)| {
                        Box::new(async move {
                            caller.data_mut().recorder.enter_host(id);
                            // A call that ends the run (`proc_exit`, a trap) never returns: its
                            // frame stays open for the end of the run to close.
                            let result = call_wasi!(caller, $name, $mode ($($arg),*))?;
                            let succeeded = Outcome::succeeded(&result);
                            let args = [$(i64::from($arg)),*];
                            let (fd, bytes) = detail(&mut caller, $detail, &args, succeeded);
                            caller.data_mut().recorder.exit_host(id, fd, bytes);
                            Ok(result)
                        })
                    },
                )?;
            )*
            debug_assert_eq!(index as usize, WASI_FUNCTIONS.len());
            Ok(())
        }
    };
}

/// Whether a WASI call that returned succeeded: errno 0 (or no result at all).
trait Outcome {
    fn succeeded(&self) -> bool;
}

impl Outcome for i32 {
    fn succeeded(&self) -> bool {
        *self == 0
    }
}

impl Outcome for () {
    fn succeeded(&self) -> bool {
        true
    }
}

/// Reads what `detail` asks for from the call's arguments (and, for bytes moved by a call that
/// succeeded, from the guest's memory where the call stored them).
fn detail(
    caller: &mut Caller<'_, RunState>,
    detail: Detail,
    args: &[i64],
    succeeded: bool,
) -> (Option<u32>, Option<u64>) {
    let fd = match detail {
        Detail::None => return (None, None),
        Detail::Fd | Detail::FdAndBytes => args.first().map(|fd| *fd as u32),
    };
    let bytes = match (detail, args.last(), caller.get_export("memory")) {
        (Detail::FdAndBytes, Some(&at), Some(Extern::Memory(memory))) if succeeded => {
            let mut stored = [0u8; 4];
            memory
                .read(&*caller, at as u32 as usize, &mut stored)
                .ok()
                .map(|()| u64::from(u32::from_le_bytes(stored)))
        }
        _ => None,
    };
    (fd, bytes)
}

traced_wasi! {
    sync args_get(a0: i32, a1: i32) -> i32, Detail::None;
    sync args_sizes_get(a0: i32, a1: i32) -> i32, Detail::None;
    sync environ_get(a0: i32, a1: i32) -> i32, Detail::None;
    sync environ_sizes_get(a0: i32, a1: i32) -> i32, Detail::None;
    sync clock_res_get(a0: i32, a1: i32) -> i32, Detail::None;
    sync clock_time_get(a0: i32, a1: i64, a2: i32) -> i32, Detail::None;
    async fd_advise(a0: i32, a1: i64, a2: i64, a3: i32) -> i32, Detail::Fd;
    sync fd_allocate(a0: i32, a1: i64, a2: i64) -> i32, Detail::Fd;
    async fd_close(a0: i32) -> i32, Detail::Fd;
    async fd_datasync(a0: i32) -> i32, Detail::Fd;
    async fd_fdstat_get(a0: i32, a1: i32) -> i32, Detail::Fd;
    sync fd_fdstat_set_flags(a0: i32, a1: i32) -> i32, Detail::Fd;
    sync fd_fdstat_set_rights(a0: i32, a1: i64, a2: i64) -> i32, Detail::Fd;
    async fd_filestat_get(a0: i32, a1: i32) -> i32, Detail::Fd;
    async fd_filestat_set_size(a0: i32, a1: i64) -> i32, Detail::Fd;
    async fd_filestat_set_times(a0: i32, a1: i64, a2: i64, a3: i32) -> i32, Detail::Fd;
    async fd_pread(a0: i32, a1: i32, a2: i32, a3: i64, a4: i32) -> i32, Detail::FdAndBytes;
    sync fd_prestat_get(a0: i32, a1: i32) -> i32, Detail::Fd;
    sync fd_prestat_dir_name(a0: i32, a1: i32, a2: i32) -> i32, Detail::Fd;
    async fd_pwrite(a0: i32, a1: i32, a2: i32, a3: i64, a4: i32) -> i32, Detail::FdAndBytes;
    async fd_read(a0: i32, a1: i32, a2: i32, a3: i32) -> i32, Detail::FdAndBytes;
    async fd_readdir(a0: i32, a1: i32, a2: i32, a3: i64, a4: i32) -> i32, Detail::Fd;
    async fd_renumber(a0: i32, a1: i32) -> i32, Detail::Fd;
    async fd_seek(a0: i32, a1: i64, a2: i32, a3: i32) -> i32, Detail::Fd;
    async fd_sync(a0: i32) -> i32, Detail::Fd;
    sync fd_tell(a0: i32, a1: i32) -> i32, Detail::Fd;
    async fd_write(a0: i32, a1: i32, a2: i32, a3: i32) -> i32, Detail::FdAndBytes;
    async path_create_directory(a0: i32, a1: i32, a2: i32) -> i32, Detail::Fd;
    async path_filestat_get(a0: i32, a1: i32, a2: i32, a3: i32, a4: i32) -> i32, Detail::Fd;
    async path_filestat_set_times(a0: i32, a1: i32, a2: i32, a3: i32, a4: i64, a5: i64, a6: i32) -> i32, Detail::Fd;
    async path_link(a0: i32, a1: i32, a2: i32, a3: i32, a4: i32, a5: i32, a6: i32) -> i32, Detail::Fd;
    async path_open(a0: i32, a1: i32, a2: i32, a3: i32, a4: i32, a5: i64, a6: i64, a7: i32, a8: i32) -> i32, Detail::Fd;
    async path_readlink(a0: i32, a1: i32, a2: i32, a3: i32, a4: i32, a5: i32) -> i32, Detail::Fd;
    async path_remove_directory(a0: i32, a1: i32, a2: i32) -> i32, Detail::Fd;
    async path_rename(a0: i32, a1: i32, a2: i32, a3: i32, a4: i32, a5: i32) -> i32, Detail::Fd;
    async path_symlink(a0: i32, a1: i32, a2: i32, a3: i32, a4: i32) -> i32, Detail::None;
    async path_unlink_file(a0: i32, a1: i32, a2: i32) -> i32, Detail::Fd;
    async poll_oneoff(a0: i32, a1: i32, a2: i32, a3: i32) -> i32, Detail::None;
    sync proc_exit(a0: i32), Detail::None;
    sync proc_raise(a0: i32) -> i32, Detail::None;
    sync sched_yield() -> i32, Detail::None;
    sync random_get(a0: i32, a1: i32) -> i32, Detail::None;
    sync sock_accept(a0: i32, a1: i32, a2: i32) -> i32, Detail::Fd;
    sync sock_recv(a0: i32, a1: i32, a2: i32, a3: i32, a4: i32, a5: i32) -> i32, Detail::Fd;
    sync sock_send(a0: i32, a1: i32, a2: i32, a3: i32, a4: i32) -> i32, Detail::Fd;
    sync sock_shutdown(a0: i32, a1: i32) -> i32, Detail::Fd;
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::{Engine, Store};

    /// Every function wasmtime-wasi defines is wrapped, with the same type.
    #[test]
    fn the_traced_functions_are_wasmtime_wasis_own() {
        let engine = Engine::default();
        let types = |traced: bool| {
            let mut linker: Linker<RunState> = Linker::new(&engine);
            if traced {
                add_traced_wasi(&mut linker).unwrap();
            } else {
                wasmtime_wasi::p1::add_to_linker_async(&mut linker, |s| &mut s.wasi).unwrap();
            }
            let mut store = Store::new(&engine, super::super::test_state());
            let items: Vec<(String, Extern)> = linker
                .iter(&mut store)
                .map(|(_, name, item)| (name.to_string(), item))
                .collect();
            let mut types: Vec<(String, String)> = items
                .into_iter()
                .map(|(name, item)| {
                    let ty = item.into_func().unwrap().ty(&store);
                    let params: Vec<String> = ty.params().map(|t| t.to_string()).collect();
                    let results: Vec<String> = ty.results().map(|t| t.to_string()).collect();
                    (name, format!("{params:?} -> {results:?}"))
                })
                .collect();
            types.sort();
            types
        };
        let plain = types(false);
        assert_eq!(plain.len(), WASI_FUNCTIONS.len());
        assert_eq!(types(true), plain);
    }
}
