//! The SAPI × feature matrix: which checks run behind which server, in one table.
//!
//! Each line of [`matrix!`] names a SAPI (a module, and the [`Kind`](crate::util::Kind) of
//! stack it starts) and the features checked behind it; every pair becomes its own
//! `#[test]`, named `matrix::<sapi>::<feature>`, that fails on its own and shows in
//! `cargo test -- --list`. A feature is a function `fn(Kind)` in `matrix/features.rs`: it
//! starts the stack the check needs (with or without a manager, how many workers), runs the
//! check from `util::scenarios` and looks at the server's logs.
//!
//! - A new SAPI: a `Kind` in `util/stack/mod.rs` that `Stack::start` can start, then one line
//!   here listing the features it must pass.
//! - A new feature: a function in `matrix/features.rs`, then its name in the line of every
//!   SAPI that has it.
//!
//! Checks that only make sense for one server (Apache's pipelining, nginx's FastCGI
//! keep-alive pool) stay in that server's module (`apache.rs`, `fpm.rs`).

mod features;

/// `sapi(Kind): [feature, ...]` → `mod sapi { #[test] fn feature() { features::feature(Kind) } }`.
macro_rules! matrix {
    ($($sapi:ident($kind:ident): [$($feature:ident),* $(,)?]),* $(,)?) => {
        $(
            mod $sapi {
                $(
                    #[test]
                    fn $feature() {
                        super::features::$feature(crate::util::Kind::$kind);
                    }
                )*
            }
        )*
    };
}

matrix! {
    // nginx + php-fpm: the manager answers in FastCGI records.
    fpm(Fpm): [
        byte_exact_downloads_through_manager,
        ranges_and_conditionals_through_manager,
        ranges_and_conditionals_without_manager,
        script_headers_reach_client,
        fallback_without_manager_streams_in_process,
        output_after_handoff_is_dropped,
        send_file_after_flush_throws,
        missing_file_gives_script_404,
        worker_free_during_slow_download,
        hung_manager_falls_back_after_timeout,
        rate_option_limits_speed,
        download_answering_unread_post,
        script_cannot_redirect_handoff_socket,
        status_header_same_on_both_paths,
        raw_header_bytes_are_kept_on_both_paths,
        at_capacity_the_manager_answers_503,
        manager_killed_with_handoffs_queued,
        manager_killed_before_confirming,
        manager_crashing_after_confirming,
        manager_killed_mid_stream,
    ],
    // `php -S`: the manager writes raw HTTP/1.1 on the client's socket.
    cli_server(CliServer): [
        byte_exact_downloads_through_manager,
        ranges_and_conditionals_through_manager,
        ranges_and_conditionals_without_manager,
        script_headers_reach_client,
        fallback_without_manager_streams_in_process,
        output_after_handoff_is_dropped,
        send_file_after_flush_throws,
        missing_file_gives_script_404,
        worker_free_during_slow_download,
        aborted_download_is_logged,
        hung_manager_falls_back_after_timeout,
        rate_option_limits_speed,
        download_answering_unread_post,
        script_cannot_redirect_handoff_socket,
        status_header_same_on_both_paths,
        raw_header_bytes_are_kept_on_both_paths,
        at_capacity_the_manager_answers_503,
        manager_killed_with_handoffs_queued,
        manager_killed_before_confirming,
        manager_crashing_after_confirming,
        failed_go_keeps_close_on_exec,
        manager_killed_mid_stream,
    ],
    // Apache prefork + mod_php: raw HTTP/1.1 on the connection taken from `conn_rec`.
    apache(Apache): [
        byte_exact_downloads_through_manager,
        ranges_and_conditionals_through_manager,
        ranges_and_conditionals_without_manager,
        script_headers_reach_client,
        fallback_without_manager_streams_in_process,
        output_after_handoff_is_dropped,
        send_file_after_flush_throws,
        missing_file_gives_script_404,
        worker_free_during_slow_download,
        aborted_download_is_logged,
        hung_manager_falls_back_after_timeout,
        rate_option_limits_speed,
        download_answering_unread_post,
        manager_crashing_after_confirming,
        failed_go_keeps_close_on_exec,
    ],
    // The other FastCGI front ends before php-fpm, each configured from its file in deploy/.
    lighttpd(Lighttpd): [
        byte_exact_downloads_through_manager,
        ranges_and_conditionals_through_manager,
        ranges_and_conditionals_without_manager,
        script_headers_reach_client,
        fallback_without_manager_streams_in_process,
        worker_free_during_slow_download,
        manager_killed_mid_stream_closes_client,
    ],
    caddy(Caddy): [
        byte_exact_downloads_through_manager,
        ranges_and_conditionals_through_manager,
        ranges_and_conditionals_without_manager,
        script_headers_reach_client,
        fallback_without_manager_streams_in_process,
        worker_free_during_slow_download,
        manager_killed_mid_stream_closes_client,
    ],
    apache_fcgi(ApacheFcgi): [
        byte_exact_downloads_through_manager,
        ranges_and_conditionals_through_manager,
        ranges_and_conditionals_without_manager,
        script_headers_reach_client,
        fallback_without_manager_streams_in_process,
        worker_free_during_slow_download,
        manager_killed_mid_stream_closes_client,
    ],
}
