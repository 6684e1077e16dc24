/* device_radix_sort.cuh - stand-in for CUB's cub/device/device_radix_sort.cuh, for the CUDA
 * emulator (tests/cuda_emu) only: cub::DeviceRadixSort::SortPairs with CUB's signature and
 * contract, run on the CPU (device memory is host memory, streams are synchronous).
 *
 * As CUB documents: a first call with d_temp_storage NULL only sets temp_storage_bytes; the
 * second sorts the pairs by the key bits [begin_bit, end_bit), ascending and stable (pairs with
 * equal bits keep their input order), into keys_out / values_out, which must not overlap the
 * inputs. Signed keys order as numbers (CUB flips their sign bit). The temporary storage holds
 * the sorting permutation. */
#ifndef LU_EMU_CUB_DEVICE_RADIX_SORT_CUH
#define LU_EMU_CUB_DEVICE_RADIX_SORT_CUH

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <numeric>
#include <type_traits>

#include "cuda_runtime_api.h"

namespace cub {

struct DeviceRadixSort {
    template <typename KeyT, typename ValueT, typename NumItemsT>
    static cudaError_t SortPairs(void *d_temp_storage, size_t &temp_storage_bytes, const KeyT *d_keys_in,
                                 KeyT *d_keys_out, const ValueT *d_values_in, ValueT *d_values_out, NumItemsT num_items,
                                 int begin_bit = 0, int end_bit = sizeof(KeyT) * 8, cudaStream_t stream = 0)
    {
        static_assert(std::is_integral<KeyT>::value, "the stand-in sorts integer keys only");
        typedef typename std::make_unsigned<KeyT>::type Bits;
        const int key_bits = (int)sizeof(KeyT) * 8;
        (void)stream;
        size_t n = num_items > 0 ? (size_t)num_items : 0;
        /* The permutation, plus room to align it. */
        size_t need = (n + 1) * sizeof(size_t);
        if (!d_temp_storage) {
            temp_storage_bytes = need;
            return cudaSuccess;
        }
        if (temp_storage_bytes < need || begin_bit < 0 || end_bit > key_bits || begin_bit > end_bit)
            return cudaErrorInvalidValue;
        if (n == 0) return cudaSuccess;
        void *space = d_temp_storage;
        size_t space_bytes = temp_storage_bytes;
        size_t *order = (size_t *)std::align(alignof(size_t), n * sizeof(size_t), space, space_bytes);
        if (!order) return cudaErrorInvalidValue;
        int width = end_bit - begin_bit;
        Bits mask = width >= key_bits ? (Bits)~(Bits)0 : (Bits)(((Bits)1 << width) - 1);
        Bits flip = std::is_signed<KeyT>::value ? (Bits)((Bits)1 << (key_bits - 1)) : (Bits)0;
        auto digit = [&](size_t i) -> Bits {
            Bits u = (Bits)((Bits)d_keys_in[i] ^ flip);
            return width == 0 ? (Bits)0 : (Bits)((u >> begin_bit) & mask);
        };
        std::iota(order, order + n, (size_t)0);
        std::stable_sort(order, order + n, [&](size_t x, size_t y) { return digit(x) < digit(y); });
        for (size_t i = 0; i < n; i++) {
            d_keys_out[i] = d_keys_in[order[i]];
            d_values_out[i] = d_values_in[order[i]];
        }
        return cudaSuccess;
    }
};

} // namespace cub

#endif
