/*
 * bcryptprimitives.dll for Wine 8 (Debian bookworm's), which lacks it.
 *
 * Rust's standard library for x86_64-pc-windows-gnu draws its random bytes
 * from ProcessPrng in bcryptprimitives.dll (present since Windows 10), so
 * every Rust program built for Windows imports it, and Wine 8 refuses to
 * start them. This library supplies that one function from RtlGenRandom
 * (advapi32's SystemFunction036), which Wine has. It is built and dropped
 * into a throwaway Wine prefix by scripts/windows-check.sh; nothing else
 * uses it.
 */
#include <windows.h>
#include <ntsecapi.h>

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        /* RtlGenRandom takes a ULONG length. */
        ULONG chunk = length > 0x10000000 ? 0x10000000 : (ULONG)length;
        if (!RtlGenRandom(data, chunk))
            return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
