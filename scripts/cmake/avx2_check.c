/* Exits 0 when this CPU runs x86-64-v3 code (AVX2, FMA, BMI2): CMakeLists.txt then builds for it. */
int main(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2") ? 0 : 1;
}
